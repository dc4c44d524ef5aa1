"""RMSNorm (pre-norm transformer blocks) and LayerNorm (conformer blocks, ported post-LN
models such as BERT)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mufm.layers.linear import param


class RMSNorm(nnx.Module):
    def __init__(self, features: int, *, eps: float = 1e-6, dtype=jnp.float32, rngs: nnx.Rngs):
        self.scale = param(rngs, nnx.initializers.ones, (features,), ("embed",))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # Statistics in fp32 whatever the compute dtype: bf16 variance loses too much.
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(self.dtype)


class LayerNorm(nnx.Module):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, whose logical name is
    `axis` (the conformer's conv module normalises its `mlp` channels); biased variance, as
    torch, and fp32 statistics whatever the compute dtype."""

    def __init__(self, features: int, *, eps: float = 1e-6, axis: str = "embed", dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.scale = param(rngs, nnx.initializers.ones, (features,), (axis,))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (features,), (axis,))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)
