"""Input-pipeline benchmark: corpus build speed and seqio training crops per second.

``python -m mufm.bench.input_pipeline [--corpus_dir=DIR] [--data_dir=DIR] [--batches=N]``

1. Build speed: renders a fresh 6-work slice of the ``quick`` config (2 variants) into a
   temporary directory and reports seconds of audio per wall second.
2. Crops/s: the ``mufm_corpus_audio`` task over the full ``quick`` corpus (built and
   TFDS-prepared under ``--corpus_dir`` / ``--data_dir`` on first use, reused afterwards),
   10 s crops in batches of 16 from the shuffled train split, after a warm-up.
The last line is ``crops_per_s=<float>``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from mufm.audio import SAMPLE_RATE


def build_speed(jobs: int | None) -> dict:
    from mufm.data.corpus.build import build
    from mufm.data.corpus.config import get_config
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        rep = build(get_config("quick"), d, jobs=jobs, limit=6, progress=False, log=lambda *_: None)
        wall = time.time() - t0
    return {"works": rep["works_rendered"], "audio_s": rep["audio_seconds"], "wall_s": wall,
            "audio_s_per_wall_s": rep["audio_seconds"] / wall}


def crops_per_second(corpus_dir: str, data_dir: str, batch: int, crop_s: float, batches: int,
                     warmup: int) -> dict:
    from mufm.data import tasks
    task = tasks.register_corpus_task(name="bench_corpus_audio", data_dir=data_dir, corpus_dir=corpus_dir,
                                      crop_seconds=crop_s)
    t0 = time.time()
    ds = task.get_dataset(split="train", shuffle=True, seed=0, num_epochs=None,
                          sequence_length={"waveform": int(crop_s * SAMPLE_RATE)})
    it = ds.batch(batch, drop_remainder=True).as_numpy_iterator()
    for _ in range(warmup):
        b = next(it)
    first = time.time() - t0
    t1 = time.time()
    for _ in range(batches):
        b = next(it)
    dt = time.time() - t1
    assert b["waveform"].shape == (batch, int(crop_s * SAMPLE_RATE))
    return {"setup_and_warmup_s": first, "timed_batches": batches, "timed_s": dt,
            "crops_per_s": batches * batch / dt}


def main(argv=None) -> None:
    cache = os.environ.get("MUFM_CACHE", os.path.expanduser("~/.cache/mufm"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus_dir", default=os.path.join(cache, "corpus_quick"))
    p.add_argument("--data_dir", default=os.path.join(cache, "tfds"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop_seconds", type=float, default=10.0)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--skip_build_speed", action="store_true")
    a = p.parse_args(argv)
    if not a.skip_build_speed:
        b = build_speed(a.jobs)
        print(f"corpus build: {b['works']} works, {b['audio_s']:.1f} s of audio in {b['wall_s']:.1f} s wall "
              f"-> {b['audio_s_per_wall_s']:.1f} s audio / wall s ({os.cpu_count()} cores)")
    if not os.path.exists(os.path.join(a.corpus_dir, "manifest.jsonl")):
        from mufm.data.corpus.build import build
        from mufm.data.corpus.config import get_config
        build(get_config("quick"), a.corpus_dir, jobs=a.jobs)
    c = crops_per_second(a.corpus_dir, a.data_dir, a.batch, a.crop_seconds, a.batches, a.warmup)
    print(f"seqio mufm_corpus_audio: batch {a.batch} x {a.crop_seconds:g} s crops, "
          f"{c['timed_batches']} batches in {c['timed_s']:.2f} s (setup + warm-up {c['setup_and_warmup_s']:.1f} s)")
    print(f"crops_per_s={c['crops_per_s']:.2f}")


if __name__ == "__main__":
    main()
