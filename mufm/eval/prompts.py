"""The evaluation's prompt sets, each prompt with a fixed seed so two evaluations of one
checkpoint generate the same audio:

- `corpus_prompts`: held-out captions of a built corpus, with their key, bpm and
  instruments and the reference clip they describe;
- `musiccaps_prompts`: a MusicCaps-style CSV a user brings (`ytid, caption, aspect_list`;
  no reference audio, no key or tempo);
- `control_prompts`: captions written from the corpus's own caption template that sweep
  keys, modes, tempi and instruments, for key and tempo controllability.
"""
from __future__ import annotations

import csv
import itertools
import zlib
from typing import NamedTuple, Sequence

from mufm.eval.control import PITCH_CLASSES


class Prompt(NamedTuple):
    id: str
    caption: str
    seed: int  # from the id: the same prompt always gets the same noise
    key: str | None = None  # "F# minor"
    bpm: float | None = None
    instruments: tuple[str, ...] = ()
    audio: str | None = None  # the reference clip's path (corpus prompts)
    duration_s: float | None = None


def seed_of(prompt_id: str) -> int:
    return zlib.crc32(prompt_id.encode("utf-8")) & 0x7FFFFFFF


def corpus_prompts(corpus_dir: str, split: str = "test", limit: int | None = None) -> list[Prompt]:
    """Held-out captions, evenly spread over the split's clips when `limit` is given."""
    from mufm.data.corpus.manifest import read_manifest

    records = sorted((r for r in read_manifest(corpus_dir) if r["split"] == split),
                     key=lambda r: r["clip_id"])
    if not records:
        raise ValueError(f"{corpus_dir}: no clips in split {split!r}")
    if limit is not None and limit < len(records):
        step = len(records) / limit
        records = [records[int(i * step)] for i in range(limit)]
    out = []
    for r in records:
        a = r["attributes"]
        out.append(Prompt(id=r["clip_id"], caption=r["caption"], seed=seed_of(r["clip_id"]),
                          key=a.get("key"), bpm=a.get("bpm"),
                          instruments=tuple(a.get("instruments", ())),
                          audio=f"{corpus_dir}/{r['audio']}", duration_s=a.get("duration_s")))
    return out


def musiccaps_prompts(path: str, limit: int | None = None) -> list[Prompt]:
    """Rows of a MusicCaps-style CSV (`ytid`, `caption`, optional `aspect_list`)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"ytid", "caption"} <= set(rows[0]):
        raise ValueError(f"{path}: a MusicCaps CSV needs 'ytid' and 'caption' columns")
    out = []
    for i, row in enumerate(rows[:limit]):
        caption = (row.get("caption") or "").strip()
        if not caption:
            raise ValueError(f"{path}: row {i + 2} ({row.get('ytid')}) has an empty caption")
        out.append(Prompt(id=row["ytid"], caption=caption, seed=seed_of(row["ytid"])))
    return out


CONTROL_TEMPLATE = "{key}, {bpm} bpm, 4/4: a piece played by a {instrument}."


def control_prompts(keys: Sequence[str] = ("C major", "A minor", "F# minor", "Eb major"),
                    bpms: Sequence[int] = (70, 100, 140),
                    instruments: Sequence[str] = ("piano", "violin")) -> list[Prompt]:
    """The sweep keys x bpms x instruments, in the corpus's caption style."""
    for k in keys:
        tonic = k.split()[0]
        if tonic not in PITCH_CLASSES and tonic not in ("Db", "D#", "Gb", "G#", "A#", "Cb", "B#"):
            raise ValueError(f"control key {k!r}: spell it like 'F# minor'")
    out = []
    for key, bpm, instrument in itertools.product(keys, bpms, instruments):
        pid = f"control/{key.replace(' ', '_')}/{bpm}/{instrument}"
        out.append(Prompt(id=pid, caption=CONTROL_TEMPLATE.format(key=key, bpm=bpm,
                                                                   instrument=instrument),
                          seed=seed_of(pid), key=key, bpm=float(bpm), instruments=(instrument,)))
    return out
