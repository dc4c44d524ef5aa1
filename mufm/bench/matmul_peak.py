"""The machine's own matmul FLOP/s: the yardstick every benchmark divides by.

    python -m mufm.bench.matmul_peak
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def matmul_flops_per_s(n: int = 2048, reps: int = 10, dtype=jnp.float32) -> float:
    """Best-of-reps FLOP/s of one jitted n x n x n matmul (2 n^3 FLOPs)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


if __name__ == "__main__":
    print(f"matmul_2048_fp32_gflops={matmul_flops_per_s() / 1e9:.1f}")
