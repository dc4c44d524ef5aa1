"""Parameters with logical axis names, dense projections and embeddings.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds its logical axis
names; `mufm.parallel.logical` turns those into mesh shardings. Eager sharding is off: the
train state is built from shapes and placed by `jit(..., out_shardings=...)`.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mufm.parallel.logical import constrain

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes, dtype=jnp.float32) -> nnx.Param:
    if len(axes) != len(shape):
        raise ValueError(f"parameter of shape {tuple(shape)} given axes {axes}")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes),
                     eager_sharding=False)


def fan_in_init(in_axis, out_axis, scale: float = 1.0):
    """Truncated-normal fan-in init (LeCun) for kernels with several input/output axes."""
    return nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal",
                                             in_axis=in_axis, out_axis=out_axis)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class Dense(nnx.Module):
    """y[..., out...] = x[..., in...] @ kernel[in..., out...], computed in `dtype`.

    `in_axes`/`out_axes` are the logical names of the contracted and produced dimensions.
    `use_bias` adds a zero-initialised bias over the output dimensions (ported pretrained
    models such as BERT have one; the project's own models do without).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *, in_axes: Axes,
                 out_axes: Axes, dtype=jnp.float32, init_scale: float = 1.0,
                 use_bias: bool = False, rngs: nnx.Rngs):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        n_in, n_out = len(self.in_shape), len(self.out_shape)
        init = fan_in_init(tuple(range(n_in)), tuple(range(n_in, n_in + n_out)), init_scale)
        self.kernel = param(rngs, init, self.in_shape + self.out_shape, tuple(in_axes) + tuple(out_axes))
        if use_bias:
            self.bias = param(rngs, nnx.initializers.zeros, self.out_shape, tuple(out_axes))
        self.use_bias = use_bias
        self.dtype = dtype
        ins, outs = _LETTERS[:n_in], _LETTERS[n_in:n_in + n_out]
        self._eq = f"...{ins},{ins}{outs}->...{outs}"

    def __call__(self, x: jax.Array) -> jax.Array:
        # One 2-D GEMM: leading dims and multi-axis in/out features flattened. XLA:CPU runs
        # the weight-gradient dot of the N-D einsum (contracting batch and length at once)
        # far below matmul speed; the 2-D form's backward is two plain GEMMs.
        n_in = math.prod(self.in_shape)
        lead = x.shape[:x.ndim - len(self.in_shape)]
        kernel = self.kernel[...].astype(self.dtype).reshape(n_in, -1)
        y = (x.astype(self.dtype).reshape(-1, n_in) @ kernel).reshape(lead + self.out_shape)
        if self.use_bias:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table of shape (vocab, embed); `attend` gives tied output logits."""

    def __init__(self, vocab_size: int, features: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.embedding = param(rngs, nnx.initializers.normal(stddev=1.0), (vocab_size, features),
                               ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = jnp.take(self.embedding[...].astype(self.dtype), ids, axis=0)
        return constrain(x, ("batch", "length", "embed"))

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))
