"""The corpus build: works -> worker processes (music21 + fluidsynth) -> FLAC + metadata.

Layout of a built corpus directory::

  build_config.json          the CorpusConfig it was built with (a resume must match)
  works.json                 the selected works with their splits (frozen at the first run)
  works/<work_id>.json       one marker per finished work: rendered (with its clips) or skipped
  audio/<work_id>/<variant>.flac   24 kHz mono 16-bit, loudness-normalised
  audio/<work_id>/<variant>.json   the clip's metadata record (caption, attributes, split ...)
  audio/<work_id>/<variant>.labels.npz   its notes and beats in seconds (`labels.py`)
  midi/<work_id>/<variant>.mid     the MIDI that was rendered
  manifest.jsonl             every clip record, sorted by clip id (written at the end)
  report.json                counts, audio seconds, skips by reason, wall time

Each work runs in a forked worker that is killed if music21 overruns ``parse_timeout_s``;
a failed or timed-out work is retried once with its repeats stripped. Clip files and
markers are written atomically, markers last, so a killed build resumes where it stopped
and a second run skips every finished work. A marker records the builder's output
``FORMAT``; works finished by an older format (e.g. before clips had labels) are redone,
which reproduces their audio and adds what the format now includes.
"""
from __future__ import annotations

import copy
import ctypes
import dataclasses
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque

from mufm.data.corpus import captions
from mufm.data.corpus.config import SOUNDFONT_ENV, CorpusConfig
from mufm.data.corpus.works import Work, list_works

from mufm.data.corpus.manifest import MANIFEST, REPORT

# What a finished work's files include; raise it when a build writes a new kind of file
# (2: labels.npz per clip), so resumed builds redo the works an older builder finished.
FORMAT = 2


def write_json_atomic(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _die_with_parent() -> None:
    """Linux: deliver SIGKILL to this process when its parent dies (no orphaned workers)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _work_job(work: Work, cfg: CorpusConfig, out_dir: str, strip: bool, conn) -> None:
    """Worker body: parse, analyse, write MIDI per variant (phase "music21"), then render."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    phase = "parse"
    try:
        from mufm.audio.io import write_flac
        from mufm.data.corpus import labels, render, score, variants
        s = score.parse(work)
        if strip:
            score.strip_repeats(s)
        facts = score.analyse(s)
        plan = score.tempo_plan(s) if facts.has_tempo_mark else []
        phase = "midi"
        midis = []
        for v in variants.choose_variants(work, cfg, facts.n_parts):
            bpm = score.bpm_for(facts, work.collection, v.tempo_scale, cfg.bpm_bounds)
            sv = copy.deepcopy(s)  # variants never see each other's edits
            score.apply_variant(sv, v, plan, bpm)
            mf = score.to_midi(sv)
            path = os.path.join(out_dir, "midi", work.work_id, v.variant_id + ".mid")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            score.write_midi(mf, path)
            midis.append((v, bpm, labels.read_midi(path), path))  # read back what plays
        phase = "beats"
        beats_q, downbeats_q = score.beat_grid(s)  # variants share the score's bars
        conn.send(("rendering", None))
        phase = "render"
        clips, errors = [], []
        for v, bpm, midi, midi_path in midis:
            seconds = midi.length_s
            clip_id = f"{work.work_id}/{v.variant_id}"
            wav = os.path.join(out_dir, "tmp", f"{work.work_id}.{v.variant_id}.{os.getpid()}.wav")
            try:
                render.render_midi(midi_path, wav, cfg.soundfont, cfg.sample_rate, seconds,
                                   cfg.render_timeout_s, cfg.render_length_ratio)
                y = render.master(wav, cfg.sample_rate, cfg.target_lufs, seconds,
                                  cfg.max_clip_seconds)
            except render.RenderError as e:
                errors.append({"variant_id": v.variant_id, "reason": e.reason,
                               "detail": str(e)[:300]})
                continue
            finally:
                if os.path.exists(wav):
                    os.remove(wav)
            duration = len(y) / cfg.sample_rate
            attrs = captions.attributes(work=work, facts=facts, variant=v, bpm=bpm,
                                        duration_s=duration)
            text, template = captions.caption(attrs, cfg.seed, clip_id)
            rel = os.path.join("audio", work.work_id, v.variant_id)
            clip_labels = labels.clip_labels(midi, beats_q, downbeats_q, duration)
            record = {
                "clip_id": clip_id, "work_id": work.work_id, "variant_id": v.variant_id,
                "split": work.split, "audio": rel + ".flac", "labels": rel + labels.SUFFIX,
                "n_notes": len(clip_labels["notes"]), "n_beats": len(clip_labels["beats"]),
                "midi": os.path.relpath(midi_path, out_dir), "sample_rate": cfg.sample_rate,
                "num_samples": int(len(y)), "caption": text, "caption_template": template,
                "attributes": attrs, "variant": v.to_json(),
                "score": {"source_path": work.source_path, "number": work.number,
                          "quarter_length": facts.quarter_length, "repeats_stripped": strip,
                          "midi_seconds": round(seconds, 3),
                          # of the notes as rendered: a transposition rotates them
                          "pitch_class_weights": [
                              round(facts.pitch_class_weights[(k - v.transpose) % 12], 6)
                              for k in range(12)]},
            }
            write_flac(os.path.join(out_dir, rel + ".flac"), y, cfg.sample_rate)
            labels.write_labels(os.path.join(out_dir, rel + labels.SUFFIX), clip_labels)
            write_json_atomic(os.path.join(out_dir, rel + ".json"), record)
            clips.append(record)
        conn.send(("done", {"clips": clips, "errors": errors}))
    except Exception as e:  # any music21 failure is data, not a crash
        conn.send(("error",
                   {"reason": f"{phase}_error", "detail": f"{type(e).__name__}: {e}"[:300]}))
    finally:
        conn.close()


def _load_or_list_works(cfg: CorpusConfig, out_dir: str, limit: int | None) -> list[Work]:
    """The work list of this build, frozen in works.json at the first run (a resume reuses
    it rather than re-reading music21's metadata bundle, which takes seconds)."""
    path = os.path.join(out_dir, "works.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("limit") == limit:
            return [Work(**w) for w in saved["works"]]
    works = list_works(cfg, limit)
    write_json_atomic(path, {"limit": limit, "works": [dataclasses.asdict(w) for w in works]})
    return works


def _finished(marker_path: str) -> bool:
    """A work is done when its marker exists and was written by this output format."""
    if not os.path.exists(marker_path):
        return False
    with open(marker_path) as f:
        return json.load(f).get("format", 1) >= FORMAT


class _Running:
    def __init__(self, work, attempt, proc, conn, deadline):
        self.work, self.attempt, self.proc, self.conn = work, attempt, proc, conn
        self.phase, self.deadline = "music21", deadline


def build(cfg: CorpusConfig, out_dir: str, jobs: int | None = None, limit: int | None = None,
          progress: bool = True, force: bool = False, log=print) -> dict:
    """Builds (or resumes) the corpus under ``out_dir``; returns the report dict."""
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    cfg_path = os.path.join(out_dir, "build_config.json")
    if os.path.exists(cfg_path) and not force:
        with open(cfg_path) as f:
            old = json.load(f)
        if not cfg.same_as_recorded(old):
            raise ValueError(f"{out_dir} was built with another config; use a new --out or --force")
    # Checked before the config is recorded: a mistyped $MUFM_SOUNDFONT must not become
    # the directory's config (every render would fail, and the fix would be refused).
    if not os.path.exists(cfg.soundfont):
        raise FileNotFoundError(f"soundfont {cfg.soundfont} not found: set {SOUNDFONT_ENV} "
                                "or install fluid-soundfont-gm")
    write_json_atomic(cfg_path, cfg.to_json())
    shutil.rmtree(os.path.join(out_dir, "tmp"), ignore_errors=True)
    os.makedirs(os.path.join(out_dir, "tmp"))
    if os.path.isdir(os.path.join(out_dir, "works")):  # half-written markers of a killed run
        for f in os.listdir(os.path.join(out_dir, "works")):
            if f.endswith(".tmp"):
                os.remove(os.path.join(out_dir, "works", f))

    works = _load_or_list_works(cfg, out_dir, limit)
    marker = lambda w: os.path.join(out_dir, "works", w.work_id + ".json")
    todo = deque(w for w in works if not _finished(marker(w)))
    already = len(works) - len(todo)
    jobs = max(1, jobs or os.cpu_count() or 1)
    log(f"[corpus] config={cfg.name} works={len(works)} already_done={already} "
        f"to_do={len(todo)} jobs={jobs}")

    # Import the worker's modules (music21, scipy via pyloudnorm: seconds of imports) once,
    # here, so every forked worker inherits them instead of importing them again.
    if todo:
        from mufm.audio import io as _io  # noqa: F401
        from mufm.data.corpus import (render as _render, score as _score,  # noqa: F401
                                      variants as _variants)

    ctx = mp.get_context("fork")
    running: dict = {}
    bar = None
    if progress:
        from tqdm import tqdm
        tqdm.monitor_interval = 0  # no monitor thread: workers are forked
        bar = tqdm(total=len(todo), unit="work", desc=f"corpus {cfg.name}", file=sys.stderr)
    rendered_s = 0.0

    def start(work, attempt):
        # No marker yet, so whatever a killed run left for this work (clips of some variants,
        # temp files of a half-written FLAC) is partial: start it from nothing.
        for sub in ("audio", "midi"):
            shutil.rmtree(os.path.join(out_dir, sub, work.work_id), ignore_errors=True)
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_work_job, args=(work, cfg, out_dir, attempt > 0,
                                                   child), daemon=True)
        proc.start()
        child.close()
        running[parent] = _Running(work, attempt, proc, parent,
                                   time.monotonic() + cfg.parse_timeout_s)

    def finish(r, result):
        nonlocal rendered_s
        running.pop(r.conn)
        r.conn.close()
        r.proc.join(5)
        if r.proc.is_alive():
            r.proc.kill()
            r.proc.join()
        if result.get("retry") and r.attempt == 0:
            start(r.work, 1)  # retry once with repeats stripped
            return
        rec = {"work_id": r.work.work_id, "split": r.work.split, "attempts": r.attempt + 1,
               "format": FORMAT}
        clips = result.get("clips") or []
        if clips:
            rec.update(status="rendered", clips=[c["clip_id"] for c in clips],
                       seconds=round(sum(c["num_samples"] for c in clips) / cfg.sample_rate, 3))
            rendered_s += rec["seconds"]
        else:
            errs = result.get("errors") or []
            rec.update(status="skipped",
                       reason=result.get("reason") or (errs[0]["reason"] if errs else "no_clips"),
                       detail=result.get("detail") or (errs[0].get("detail", "") if errs else ""))
        if result.get("errors"):
            rec["variant_errors"] = result["errors"]
        write_json_atomic(marker(r.work), rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(audio_min=f"{rendered_s / 60:.1f}")

    try:
        while todo or running:
            while todo and len(running) < jobs:
                start(todo.popleft(), 0)
            ready = mp.connection.wait(list(running), timeout=0.05)
            for conn in ready:
                r = running[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    finish(r, {"retry": True, "reason": f"{r.phase}_crash",
                               "detail": f"worker exit code {r.proc.exitcode}"})
                    continue
                if kind == "rendering":
                    r.phase = "render"
                    r.deadline = time.monotonic() + cfg.variants_per_work * (cfg.render_timeout_s + 60)
                elif kind == "done":
                    finish(r, payload)
                else:
                    finish(r, {"retry": True, **payload})
            now = time.monotonic()
            for r in [r for r in running.values() if now > r.deadline]:
                r.proc.kill()
                finish(r, {"retry": r.phase == "music21",
                           "reason": "parse_timeout" if r.phase == "music21" else "render_timeout",
                           "detail": f"attempt {r.attempt + 1} killed after the {r.phase} time limit"})
    finally:
        for r in list(running.values()):
            r.proc.kill()
        if bar is not None:
            bar.close()
    report = write_outputs(cfg, out_dir, works, already, time.time() - t0)
    log(format_report(report))
    return report


def write_outputs(cfg: CorpusConfig, out_dir: str, works: list[Work], already: int,
                  wall_s: float) -> dict:
    """Manifest (deterministic: sorted clip records) and report (with wall time)."""
    records, skipped = [], []
    by_split = {s: {"works": 0, "clips": 0,
                    "seconds": 0.0} for s in ("train", "validation", "test")}
    for w in works:
        with open(os.path.join(out_dir, "works", w.work_id + ".json")) as f:
            m = json.load(f)
        if m["status"] != "rendered":
            skipped.append({"work_id": w.work_id, "reason": m["reason"],
                            "detail": m.get("detail", "")})
            continue
        by_split[w.split]["works"] += 1
        for cid in m["clips"]:
            with open(os.path.join(out_dir, "audio", cid + ".json")) as f:
                rec = json.load(f)
            records.append(rec)
            by_split[w.split]["clips"] += 1
            by_split[w.split]["seconds"] += rec["num_samples"] / rec["sample_rate"]
    records.sort(key=lambda r: r["clip_id"])
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(tmp, os.path.join(out_dir, MANIFEST))
    seconds = sum(r["num_samples"] / r["sample_rate"] for r in records)
    report = {
        "config": cfg.name, "works": len(works), "works_rendered": len(works) - len(skipped),
        "works_skipped": len(skipped), "works_already_done": already, "clips": len(records),
        "audio_seconds": round(seconds, 2), "wall_s": round(wall_s, 2),
        "audio_seconds_per_wall_second": round(seconds / wall_s, 2) if wall_s > 0 else None,
        "splits": {k: {**v, "seconds": round(v["seconds"], 2)} for k, v in by_split.items()},
        "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped": skipped,
    }
    write_json_atomic(os.path.join(out_dir, REPORT), report)
    return report


def format_report(r: dict) -> str:
    lines = [f"[corpus] {r['config']}: {r['works_rendered']}/{r['works']} works rendered "
             f"({r['works_already_done']} were already done), {r['clips']} clips, "
             f"{r['audio_seconds'] / 60:.1f} min of audio in {r['wall_s']:.1f} s wall",
             "[corpus] splits: " + ", ".join(f"{k} {v['works']} works / {v['clips']} clips / "
                                             f"{v['seconds'] / 60:.1f} min" for k,
                                             v in r["splits"].items())]
    if r["works_skipped"]:
        lines.append(f"[corpus] skipped {r['works_skipped']}: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(r["skipped_by_reason"].items())))
    return "\n".join(lines)
