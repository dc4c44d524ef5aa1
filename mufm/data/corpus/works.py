"""Selecting works from music21's bundled corpus and assigning them to splits by work id."""
from __future__ import annotations

import dataclasses
import hashlib
import re

from mufm.data.corpus.config import CorpusConfig, collection_info

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Work:
    work_id: str
    source_path: str           # music21 corpus-relative path, e.g. "bach/bwv66.6.mxl"
    number: int | None         # tune number inside a multi-tune (ABC) file
    collection: str
    title: str | None
    composer: str | None
    region: str | None
    n_parts: int
    quarter_length: float
    split: str = "train"


def stable_hash(*parts) -> int:
    """A 64-bit hash of the parts that is the same in every process and Python version."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


def make_work_id(source_path: str, number) -> str:
    stem = re.sub(r"\.(mxl|xml|musicxml|krn|abc|mid|midi|md|rntxt|capx|mei)$", "", source_path)
    wid = stem + (f"_n{number}" if number not in (None, "") else "")
    return re.sub(r"[^A-Za-z0-9.-]+", "_", wid).strip("_")


def _metadata_entries():
    from music21 import corpus  # imported lazily: only the builder needs music21
    bundle = corpus.corpora.CoreCorpus().metadataBundle
    entries = getattr(bundle, "_metadataEntries", None)  # iterating the bundle is ~10x slower
    return list(entries.values()) if entries is not None else list(bundle)


PLAYABLE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")  # not .rntxt analyses

# Essen locales are German: the few that name countries and regions, in English.
_PLACE_NAMES = {
    "Deutschland": "Germany", "Irland": "Ireland", "Lothringen": "Lorraine",
    "Oesterreich": "Austria", "Schweiz": "Switzerland", "Elsass": "Alsace",
    "Mitteleuropa": "Central Europe", "Europa": "Europe", "Jugoslavija": "Yugoslavia",
    "Polska": "Poland", "Nederland": "the Netherlands", "Frankreich": "France",
    "Daenemark": "Denmark", "Schweden": "Sweden", "Rossija": "Russia", "Magyarorszag": "Hungary",
    "Luxemburg": "Luxembourg", "Niederlande": "the Netherlands", "Italien": "Italy",
}


def _region(md) -> str | None:
    loc = getattr(md, "localeOfComposition", None)
    if not loc:
        return None
    bits = [b.strip() for b in str(loc).split(",") if b.strip()]
    if bits and bits[0] == "China":
        return f"{bits[1]}, China" if len(bits) > 1 else "China"
    # Essen locales read "Europa, Mitteleuropa, Deutschland, Thueringen": take the country.
    if len(bits) >= 3 and bits[0] in ("Europa", "Asien", "Amerika", "Afrika"):
        place = bits[2]
    else:
        place = bits[-1]
    return _PLACE_NAMES.get(place, place)


def list_works(cfg: CorpusConfig, limit: int | None = None) -> list[Work]:
    """The works a config builds, sorted by id, each with its split.

    ``limit`` keeps the first N works by id (a smaller corpus for tests and trials); splits
    are assigned after it, so even a small build has validation and test works.
    """
    wanted = dict(cfg.collections)
    by_collection: dict[str, list[Work]] = {c: [] for c in wanted}
    for e in _metadata_entries():
        src = str(e.sourcePath)
        coll = src.split("/")[0]
        md = e.metadata
        if coll not in wanted or md is None or not src.lower().endswith(PLAYABLE_SUFFIXES):
            continue
        ql = float(md.scoreQuarterLength or 0.0)
        if ql < cfg.min_quarter_length or (cfg.max_quarter_length and ql > cfg.max_quarter_length):
            continue
        number = e.number
        try:
            number = int(number) if number not in (None, "") else None
        except (TypeError, ValueError):
            continue
        info = collection_info(coll)
        title = md.title or md.movementName or None
        if title and re.fullmatch(r".*\.(mxl|xml|krn|abc|mid)", str(title)):
            title = None
        by_collection[coll].append(Work(
            work_id=make_work_id(src, number), source_path=src, number=number, collection=coll,
            title=str(title) if title else None, composer=info.composer or md.composer,
            region=_region(md) or info.region, n_parts=int(md.numberOfParts or 1),
            quarter_length=ql))
    works: list[Work] = []
    for coll, cap in cfg.collections:
        pool = {w.work_id: w for w in by_collection[coll]}  # de-duplicate ids
        ranked = sorted(pool.values(), key=lambda w: stable_hash(cfg.seed, "select", w.work_id))
        works.extend(ranked[:cap] if cap is not None else ranked)
    works = sorted(works, key=lambda w: w.work_id)
    return assign_splits(works[:limit] if limit is not None else works, cfg)


def assign_splits(works: list[Work], cfg: CorpusConfig) -> list[Work]:
    """Splits by work: ranks works by a seeded hash of the id and cuts by fraction.

    Every variant of a work shares its split, so no work is in two splits. With three or
    more works each split gets at least one.
    """
    ranked = sorted(works, key=lambda w: stable_hash(cfg.seed, "split", w.work_id))
    n = len(ranked)
    n_val = int(round(cfg.split_fractions[1] * n))
    n_test = int(round(cfg.split_fractions[2] * n))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    split_of = {}
    for i, w in enumerate(ranked):
        split_of[w.work_id] = "validation" if i < n_val else "test" if i < n_val + n_test else "train"
    out = [dataclasses.replace(w, split=split_of[w.work_id]) for w in works]
    return sorted(out, key=lambda w: w.work_id)
