"""SEANet building blocks: causal 1-D convolutions, causal transposed convolutions and the
residual units (dilations 1, 3, 9) of the SoundStream encoder and decoder.

Layout is channels-last, `[batch, time, channels]`. Causality is by construction: every
convolution pads only on the left, so output sample t reads inputs <= t (for a strided conv,
output frame t reads inputs < (t + 1) * stride), and a transposed conv keeps only the first
`T * stride` samples of its output, so the samples of frame t read input frames <= t.
Right-padding a signal therefore never changes any earlier output; chunked streaming in
`mufm.models.codec_tokenizer` relies on that.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mufm.layers.linear import fan_in_init, param
from mufm.parallel.logical import constrain

_DIMS = ("NWC", "WIO", "NWC")
ACTIVATION = ("batch", "time", "channels")


def elu(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x)


def conv_flops(kernel: int, c_in: int, c_out: int, t_out: int, groups: int = 1) -> int:
    """Multiply-adds x 2 of one conv over one example: 2 * K * Cin/groups * Cout * T_out."""
    return 2 * kernel * (c_in // groups) * c_out * t_out


class CausalConv1d(nnx.Module):
    """y[t] = b + sum_k W[k] x[t*stride - pad + k*dilation], pad = (K-1)*dilation - (stride-1)
    on the left only: output frame t covers inputs up to (t + 1) * stride - 1 and no further.
    Input length must be a multiple of `stride` (the codec pads whole frames)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if kernel < stride:
            raise ValueError(f"kernel {kernel} shorter than stride {stride} would skip samples")
        self.kernel = param(rngs, fan_in_init((0, 1), 2), (kernel, c_in, c_out),
                            ("conv_width", "conv_in", "conv_out"))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (c_out,), ("conv_out",))
        self.stride, self.dilation, self.dtype = stride, dilation, dtype
        self.pad = (kernel - 1) * dilation - (stride - 1)
        self.shape = (kernel, c_in, c_out)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype),
            window_strides=(self.stride,), padding=((self.pad, 0),),
            rhs_dilation=(self.dilation,), dimension_numbers=_DIMS)
        return constrain(y + self.bias[...].astype(self.dtype), ACTIVATION)

    def flops(self, t_in: int) -> int:
        k, ci, co = self.shape
        return conv_flops(k, ci, co, t_in // self.stride)


class CausalConvTranspose1d(nnx.Module):
    """Upsampling by `stride` with kernel K >= stride: the full transposed conv has
    (T - 1) * stride + K samples; the last K - stride of them (which would need future
    frames to be complete) are dropped, leaving exactly T * stride causal samples."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if kernel < stride:
            raise ValueError(f"kernel {kernel} shorter than stride {stride} leaves holes")
        self.kernel = param(rngs, fan_in_init((0, 1), 2), (kernel, c_in, c_out),
                            ("conv_width", "conv_in", "conv_out"))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (c_out,), ("conv_out",))
        self.stride, self.dtype = stride, dtype
        self.shape = (kernel, c_in, c_out)

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.shape[0]
        # A transposed conv is a conv over the stride-dilated input with the flipped kernel;
        # padding K-1 on the left and stride-1 on the right keeps the first T*stride samples
        # of the full (T-1)*stride+K, i.e. drops the K-stride tail that needs frame T.
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...][::-1].astype(self.dtype),
            window_strides=(1,), padding=((k - 1, self.stride - 1),),
            lhs_dilation=(self.stride,), dimension_numbers=_DIMS)
        return constrain(y + self.bias[...].astype(self.dtype), ACTIVATION)

    def flops(self, t_in: int) -> int:
        # Counted as the dense work a direct transposed conv does: every input frame meets
        # every tap once (the lhs-dilated form XLA may use multiplies zeros too).
        k, ci, co = self.shape
        return conv_flops(k, ci, co, t_in)


class ResidualUnit(nnx.Module):
    """x + Conv1x1(ELU(CausalConv_K(ELU(x), dilation))), channels unchanged. The dilated
    conv maps to channels // compress (SoundStream: 1; EnCodec: 2, half the FLOPs)."""

    def __init__(self, channels: int, dilation: int, *, kernel: int = 7, compress: int = 1,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = max(1, channels // compress)
        self.conv = CausalConv1d(channels, hidden, kernel, dilation=dilation, dtype=dtype, rngs=rngs)
        self.proj = CausalConv1d(hidden, channels, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.proj(elu(self.conv(elu(x))))

    def flops(self, t: int) -> int:
        return self.conv.flops(t) + self.proj.flops(t)


DILATIONS = (1, 3, 9)


class EncoderBlock(nnx.Module):
    """Residual units at `c_in` channels, then ELU and a strided conv (K = 2 * stride)
    to `c_out` channels: time / stride."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, kernel: int = 7, compress: int = 1,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.units = nnx.List([ResidualUnit(c_in, d, kernel=kernel, compress=compress, dtype=dtype,
                                            rngs=rngs)
                               for d in DILATIONS])
        self.down = CausalConv1d(c_in, c_out, 2 * stride, stride=stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for unit in self.units:
            x = unit(x)
        return self.down(elu(x))

    def flops(self, t: int) -> int:
        return sum(u.flops(t) for u in self.units) + self.down.flops(t)


class DecoderBlock(nnx.Module):
    """ELU and a causal transposed conv (K = 2 * stride) to `c_out` channels: time * stride,
    then residual units at `c_out` channels."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, kernel: int = 7, compress: int = 1,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.up = CausalConvTranspose1d(c_in, c_out, 2 * stride, stride=stride, dtype=dtype, rngs=rngs)
        self.units = nnx.List([ResidualUnit(c_out, d, kernel=kernel, compress=compress, dtype=dtype,
                                            rngs=rngs)
                               for d in DILATIONS])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.up(elu(x))
        for unit in self.units:
            x = unit(x)
        return x

    def flops(self, t: int) -> int:
        t_up = t * self.up.stride
        return self.up.flops(t) + sum(u.flops(t_up) for u in self.units)
