"""A user's own music as training clips: a folder of audio files plus a captions file.

Captions come as JSONL (one object per line) or CSV with a ``file`` (or ``path`` /
``audio``) column and a ``caption`` column; any other column becomes a string attribute.
MusicCaps-style metadata (``ytid, start_s, end_s, caption, aspect_list``) is accepted too:
each row points at ``<root>/<ytid>.<ext>`` (or ``[<ytid>]*.<ext>``) and takes only the
``[start_s, end_s)`` window. An optional ``split`` column pins a file's split; otherwise
files are split by a hash of their path (all segments of one file share a split).

Nothing here imports TensorFlow: the TFDS builder (`tfds_builders/audio_folder.py`) and
tests drive `iter_clips`, which decodes each segment through `mufm.audio.decode` and
records every unusable file with its reason in the report instead of raising.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np

from mufm.audio import io as audio_io
from mufm.audio.decode import DecodePolicy, load
from mufm.data.corpus.works import stable_hash


@dataclasses.dataclass(frozen=True)
class FolderOptions:
    segment_seconds: float = 30.0          # files are cut into segments of at most this length
    max_segments_per_file: int | None = 8  # evenly spaced; hour-long files read only these
    min_seconds: float = 1.0               # shorter audio: skipped, or padded if pad_short
    pad_short: bool = False
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    seed: int = 0
    require_caption: bool = False          # with a captions file, uncaptioned files are skipped

    def policy(self) -> DecodePolicy:
        return DecodePolicy(min_seconds=self.min_seconds, pad_short=self.pad_short)


def find_audio_files(root: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.lower().endswith(audio_io.AUDIO_EXTENSIONS) and not f.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def _row_to_entry(row: dict) -> dict:
    row = {k.strip(): v for k, v in row.items() if k}
    entry = {"caption": str(row.pop("caption", "") or "")}
    for k in ("file", "path", "audio", "filename"):
        if row.get(k):
            entry["file"] = str(row.pop(k))
            break
    if row.get("ytid"):
        entry["ytid"] = str(row.pop("ytid"))
        entry["start_s"] = float(row.pop("start_s", 0) or 0)
        entry["end_s"] = float(row.pop("end_s", 0) or 0) or None
    if row.get("split"):
        entry["split"] = str(row.pop("split"))
    aspects = row.pop("aspect_list", None)
    if aspects:
        try:
            aspects = json.loads(aspects.replace("'", '"')) if isinstance(aspects, str) else aspects
        except json.JSONDecodeError:
            aspects = [a.strip(" '\"") for a in str(aspects).strip("[]").split(",")]
        entry["aspect_list"] = [str(a) for a in aspects]
    entry["attributes"] = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                           for k, v in row.items() if v not in (None, "")}
    return entry


def read_captions(path: str) -> list[dict]:
    """Entries from a JSONL or CSV captions file (see module docstring)."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.lower().endswith((".jsonl", ".json")):
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            rows = list(csv.DictReader(f))
    return [_row_to_entry(r) for r in rows]


def _resolve_ytid(root: str, ytid: str, files: list[str]) -> str | None:
    for rel in files:
        base = os.path.splitext(os.path.basename(rel))[0]
        if base == ytid or base.startswith(f"[{ytid}]") or base.startswith(ytid + "_"):
            return rel
    return None


def _split_for(rel: str, opts: FolderOptions) -> str:
    u = stable_hash(opts.seed, "folder-split", rel) / 2.0**64
    tr, va, _ = opts.split_fractions
    return "train" if u < tr else "validation" if u < tr + va else "test"


def plan_files(root: str, captions_path: str | None, opts: FolderOptions,
               report: list) -> list[dict]:
    """One entry per (file, window) to decode: file, window, caption, attributes, split."""
    files = find_audio_files(root)
    if captions_path is None:
        return [{"file": f, "caption": "", "attributes": {}, "start_s": 0.0, "end_s": None,
                 "split": _split_for(f, opts)} for f in files]
    entries, seen = [], set()
    for e in read_captions(captions_path):
        rel = e.get("file") or (_resolve_ytid(root, e["ytid"], files) if e.get("ytid") else None)
        if rel is None or not os.path.exists(os.path.join(root, rel)):
            report.append({"file": e.get("file") or e.get("ytid", "?"), "reason": "missing_file",
                           "detail": ""})
            continue
        rel = os.path.normpath(rel)
        seen.add(rel)
        attrs = dict(e.get("attributes", {}))
        if e.get("aspect_list"):
            attrs["aspect_list"] = ", ".join(e["aspect_list"])
        if e.get("ytid"):
            attrs["ytid"] = e["ytid"]
        entries.append({"file": rel, "caption": e["caption"], "attributes": attrs,
                        "start_s": float(e.get("start_s") or 0.0), "end_s": e.get("end_s"),
                        "split": e.get("split") or _split_for(rel, opts)})
    for f in files:
        if os.path.normpath(f) not in seen:
            if opts.require_caption:
                report.append({"file": f, "reason": "no_caption", "detail": ""})
            else:
                entries.append({"file": f, "caption": "", "attributes": {}, "start_s": 0.0,
                                "end_s": None,
                                "split": _split_for(f, opts)})
    return sorted(entries, key=lambda e: (e["file"], e["start_s"]))


def segment_starts(start_s: float, end_s: float, opts: FolderOptions) -> list[tuple[float, float]]:
    """(start, duration) windows inside [start_s, end_s): whole segments, evenly thinned."""
    total = max(0.0, end_s - start_s)
    seg = opts.segment_seconds
    n = int(math.floor(total / seg))
    wins = [(start_s + i * seg, seg) for i in range(n)]
    rest = total - n * seg
    if rest > 1e-6 and (n == 0 or rest >= opts.min_seconds):
        wins.append((start_s + n * seg, rest))
    k = opts.max_segments_per_file
    if k and len(wins) > k:
        idx = np.unique(np.round(np.linspace(0, len(wins) - 1, k)).astype(int))
        wins = [wins[i] for i in idx]
    return wins


def iter_clips(root: str, captions_path: str | None = None, opts: FolderOptions = FolderOptions(),
               report: list | None = None):
    """Yields decoded clips (mono float32 24 kHz) with metadata; bad files go to ``report``.

    ``report`` collects ``{"file", "reason", "detail"}`` dicts; pass a list to read it after
    the generator is exhausted. A file is reported once, at its first failing segment.
    """
    report = [] if report is None else report
    yield from iter_entry_clips(root, plan_files(root, captions_path, opts, report), opts, report)


def iter_entry_clips(root: str, entries: list[dict], opts: FolderOptions, report: list):
    """`iter_clips` over already planned entries (e.g. one split's)."""
    policy = opts.policy()
    for e in entries:
        path = os.path.join(root, e["file"])
        try:
            info = audio_io.info(path)
            end = info.duration_s if e["end_s"] is None else min(float(e["end_s"]), info.duration_s)
            windows = segment_starts(e["start_s"], end, opts)
            if not windows:
                raise audio_io.AudioReadError("too_short", f"{end - e['start_s']:.2f} s")
            clips, silent = [], None
            for start, dur in windows:
                try:
                    clips.append((start, load(path, start, dur, policy, info=info)))
                except audio_io.AudioReadError as err:
                    if err.reason != "digital_silence":
                        raise
                    silent = err  # a silent stretch of a file drops that segment only
            if not clips:
                raise silent or audio_io.AudioReadError("no_frames")
        except audio_io.AudioReadError as err:
            report.append({"file": e["file"], "reason": err.reason, "detail": err.detail})
            continue
        except Exception as err:  # anything else unexpected is still a skip, never a crash
            report.append({"file": e["file"], "reason": "decode_error",
                           "detail": f"{type(err).__name__}: {err}"[:300]})
            continue
        for start, wav in clips:
            yield {"clip_id": f"{e['file']}@{start:.3f}", "file": e["file"],
                   "start_s": float(start),
                   "waveform": wav, "caption": e["caption"], "attributes": e["attributes"],
                   "split": e["split"]}


def write_report(path: str, report: list, n_clips: int) -> dict:
    from collections import Counter
    out = {"clips": n_clips, "skipped": len(report),
           "skipped_by_reason": dict(Counter(r["reason"] for r in report)),
           "files": sorted(report, key=lambda r: r["file"])}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    return out
