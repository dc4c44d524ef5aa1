"""MuLan text tower speed: `python -m mufm.bench.text_tower [--batch 256] [--reps 5]`.

Embeds `batch` corpus-like captions (instrument, key, tempo, metre, era, in the manner
of the embedded corpus's captions) with the pretrained TextTower (MiniLM-L6 + projection,
fp32), jitted and compiled ahead of time so no timing includes compilation. Prints the
host tokenisation rate, the tower's sentences/s (median of `reps` batches), its model
FLOP/s against a 2048^3 fp32 matmul measured in the same process
(`mufm.bench.matmul_peak`), and the 1-minute load average, since the machine is shared.
FLOPs are analytic over the padded tokens the program runs: per layer and token
2 * (4 d^2 + 2 d d_ff) for the projections and 4 t d for scores and weighted sum.
The last line is `sentences_per_s=<float> ratio_to_matmul_peak=<float>`.
"""
from __future__ import annotations

import argparse
import itertools
import os
import time

import jax
import numpy as np
from flax import nnx

from mufm.bench.matmul_peak import matmul_flops_per_s
from mufm.mulan.text import TextTower, TextTowerConfig


def captions(n: int) -> list[str]:
    instruments = ["string quartet", "solo piano", "church organ", "flute and harp",
                   "brass ensemble", "acoustic guitar", "choir", "clarinet and strings"]
    keys = ["C major", "D minor", "E-flat major", "F-sharp minor", "G major", "B minor"]
    tempi = ["slow (60 bpm)", "moderate (96 bpm)", "fast (140 bpm)"]
    rest = ["in 4/4 time, Baroque era, homophonic texture.",
            "in 3/4 time, a Romantic waltz with a singing melody.",
            "in 6/8 time, a folk tune with a drone in the bass."]
    combos = itertools.cycle(itertools.product(instruments, keys, tempi, rest))
    return [f"A {i} in {k}, {t}, {r}" for (i, k, t, r), _ in zip(combos, range(n))]


def flops_per_sentence(cfg: TextTowerConfig, length: int) -> float:
    m = cfg.minilm
    per_token = m.num_layers * (2 * (4 * m.d_model ** 2 + 2 * m.d_model * m.d_ff)
                                + 4 * length * m.d_model)
    return length * per_token + 2 * m.d_model * cfg.joint_dim


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)

    cfg = TextTowerConfig()
    tower = TextTower(cfg, nnx.Rngs(0))
    texts = captions(args.batch)
    t = time.perf_counter()
    ids, mask = tower.tokenize(texts)
    tok_s = time.perf_counter() - t
    graphdef, state = nnx.split(tower)
    program = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m)).lower(state, ids, mask).compile()
    program(state, ids, mask).block_until_ready()
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        program(state, ids, mask).block_until_ready()
        times.append(time.perf_counter() - t)
    step = float(np.median(times))
    rate = args.batch / step
    flops = args.batch * flops_per_sentence(cfg, ids.shape[1]) / step
    peak = matmul_flops_per_s()
    print(f"batch={args.batch} padded_length={ids.shape[1]} "
          f"mean_tokens={mask.sum(1).mean():.1f} tokenize_per_s={args.batch / tok_s:.0f}")
    print(f"step_s median={step:.3f} min={min(times):.3f} model_gflops={flops / 1e9:.1f} "
          f"matmul_peak_gflops={peak / 1e9:.1f} loadavg_1min={os.getloadavg()[0]:.2f} "
          f"cores={os.cpu_count()}")
    print(f"sentences_per_s={rate:.1f} ratio_to_matmul_peak={flops / peak:.2f}")


if __name__ == "__main__":
    main()
