"""A 3x3 stride-2 conv over (time, frequency) planes: the convolutional subsampling of
log-mel front ends (the semantic model's feature encoder, MuLan's audio tower), with
logical axes on its parameters and output."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mufm.layers.linear import fan_in_init, param
from mufm.parallel.logical import constrain


class Conv2d(nnx.Module):
    """3x3 stride-2 conv over [b, time, mel, channels], padded by 1 on every side:
    a length L becomes ceil(L / 2) (exactly L / 2 for even L)."""

    def __init__(self, c_in: int, c_out: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = param(rngs, fan_in_init((0, 1, 2), 3), (3, 3, c_in, c_out),
                            ("conv_width", "conv_freq", "conv_in", "conv_out"))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (c_out,), ("conv_out",))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), window_strides=(2, 2),
            padding=((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return constrain(y + self.bias[...].astype(self.dtype), ("batch", "length", "mel", "channels"))
