"""A family's training step timed through the trainer's own program, for the benchmarks.

The program is the one `python -m mufm.train` would run for a gin experiment (same task,
same jitted and donated step), built on one device: XLA:CPU spreads a single device's ops
over every core, so one device is the fastest CPU layout. No data is read: the benchmark
supplies a synthetic batch shaped like the task's `batch_spec`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np

from mufm.bench.matmul_peak import matmul_flops_per_s


def experiment_program(gin_file: str, bindings: Sequence[str] = ()):
    """The trainer's Program for `gin_file` (relative to configs/) on this process's first
    device. MODEL_DIR gets a placeholder: nothing is written."""
    import gin

    from mufm.gin_flags import parse
    from mufm.train.compile_check import configured_program

    parse([gin_file], ['MODEL_DIR="/tmp/mufm_bench_unused"', *bindings])
    try:
        return configured_program(jax.devices()[:1])
    finally:
        gin.clear_config()


@dataclasses.dataclass(frozen=True)
class StepTiming:
    seconds: float  # median step time
    spread: float  # (slowest - fastest) / median over the timed steps
    flops: float  # analytic model FLOPs of one step (the task's flops_per_step)

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds


def timed_steps(step, state, batch, steps: int) -> tuple[list[float], object]:
    """(wall seconds of each of `steps` calls of a donating `step(state, batch) -> (state,
    metrics)`, the final state), after one untimed call (compilation and warm-up)."""
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    return times, state


def print_header() -> None:
    """The first line of every benchmark: what ran where, and how loaded the machine was."""
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f})", flush=True)


def time_train_step(program, host_batch: dict[str, np.ndarray], steps: int):
    """(StepTiming, state after the steps) of `steps` training steps from a fresh state on
    `host_batch`, after one untimed step (compilation and warm-up)."""
    from mufm.parallel.logical import sharding_context

    with sharding_context(program.mesh, program.rules):
        state = program.initialize(seed=0)
        times, state = timed_steps(program.step_at(0), state, program.global_batch(host_batch), steps)
    med = float(np.median(times))
    return StepTiming(med, (max(times) - min(times)) / med, program.task.flops_per_step()), state


def seconds_per_call(fn: Callable, *args, reps: int = 3) -> float:
    """Median wall time of `fn(*args)` after one untimed call (compilation)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class MatmulYardstick:
    """The machine's matmul FLOP/s measured before and after the timings: the ratio uses
    the mean, and the two readings say how much the machine's load moved meanwhile."""

    def __init__(self):
        self.before = matmul_flops_per_s()
        self.after = None

    def close(self) -> float:
        self.after = matmul_flops_per_s()
        return self.mean

    @property
    def mean(self) -> float:
        return (self.before + (self.after or self.before)) / 2

    def line(self) -> str:
        return (f"matmul_peak_gflops={self.mean / 1e9:.1f} (before {self.before / 1e9:.1f}, "
                f"after {(self.after or self.before) / 1e9:.1f})")


def harmonic_audio(batch: int, num_samples: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """[batch, num_samples] fp32: harmonic tones of a random pitch per row under a slow
    envelope, plus a little noise (a network's speed does not depend on the sound)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(110.0, 440.0, (batch, 1))
    wave = sum(0.1 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 8))
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)) + 0.01 * rng.standard_normal((batch, num_samples))
    return wave.astype(np.float32)
