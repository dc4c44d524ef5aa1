"""Position encodings: rotary embeddings (RoPE) and T5-style relative position bias."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mufm.layers.linear import param


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotates channel pairs (first half, second half) of x[b, t, h, d] by position."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {d}")
    freqs = max_wavelength ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [b, t, d/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def relative_position_bucket(relative: jax.Array, *, num_buckets: int, max_distance: int,
                             bidirectional: bool) -> jax.Array:
    """Buckets key-minus-query offsets: exact for small offsets, log-spaced up to max_distance."""
    n = -relative
    bucket = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).astype(n.dtype) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(n.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nnx.Module):
    """One learned scalar per (bucket, head), shared by all layers as in T5."""

    def __init__(self, num_heads: int, *, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = False, rngs: nnx.Rngs):
        self.bias = param(rngs, nnx.initializers.normal(stddev=0.1), (num_buckets, num_heads),
                          (None, "heads"))
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional

    def __call__(self, query_pos: jax.Array, key_pos: jax.Array) -> jax.Array:
        """query_pos [b, q], key_pos [b, k] -> additive bias [b, heads, q, k] (fp32)."""
        rel = key_pos[:, None, :] - query_pos[:, :, None]
        buckets = relative_position_bucket(rel, num_buckets=self.num_buckets,
                                           max_distance=self.max_distance,
                                           bidirectional=self.bidirectional)
        values = jnp.take(self.bias[...], buckets, axis=0)  # [b, q, k, h]
        return jnp.transpose(values, (0, 3, 1, 2))
