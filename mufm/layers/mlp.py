"""Transformer feed-forward block: GELU, SwiGLU or swish (the conformer's feed-forward)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mufm.layers.dropout import dropout
from mufm.layers.linear import Dense
from mufm.parallel.logical import constrain


class MLP(nnx.Module):
    def __init__(self, d_model: int, d_ff: int, *, activation: str = "gelu", dropout_rate: float = 0.0,
                 dtype=jnp.float32, out_init_scale: float = 1.0, rngs: nnx.Rngs):
        if activation not in ("gelu", "swiglu", "swish"):
            raise ValueError(f"unknown MLP activation {activation!r}: use 'gelu', 'swiglu' or 'swish'")
        self.activation, self.dropout_rate = activation, dropout_rate
        dense = lambda i, o, ia, oa, s=1.0: Dense((i,), (o,), in_axes=ia, out_axes=oa, dtype=dtype,
                                                  init_scale=s, rngs=rngs)
        self.wi = dense(d_model, d_ff, ("embed",), ("mlp",))
        if activation == "swiglu":
            self.wi_gate = dense(d_model, d_ff, ("embed",), ("mlp",))
        self.wo = dense(d_ff, d_model, ("mlp",), ("embed",), out_init_scale)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        h = checkpoint_name(self.wi(x), "mlp_in")
        if self.activation == "swiglu":
            h = jax.nn.silu(checkpoint_name(self.wi_gate(x), "mlp_gate")) * h
        elif self.activation == "swish":
            h = jax.nn.silu(h)
        else:
            h = jax.nn.gelu(h)
        h = constrain(h, ("batch", "length", "mlp"))
        h = dropout(h, self.dropout_rate, key)
        return checkpoint_name(self.wo(h), "mlp_out")
