"""RMSNorm (pre-norm transformer blocks)."""
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
