"""SEANet building blocks: causal 1-D convolutions, causal transposed convolutions and the
residual units (dilations 1, 3, 9) of the SoundStream encoder and decoder.

Layout is channels-last, `[batch, time, channels]`. Causality is by construction: every
convolution pads only on the left, so output sample t reads inputs <= t (for a strided conv,
output frame t reads inputs < (t + 1) * stride), and a transposed conv keeps only the first
`T * stride` samples of its output, so the samples of frame t read input frames <= t.
Right-padding a signal therefore never changes any earlier output.

Streaming. Every layer also has `stream(x, state) -> (y, state)`: `x` is the next chunk of
a long input and `state` what the layer kept of the chunks before it (each conv keeps the
last `pad` input samples it needs as left context, a transposed conv its last input
frames; `None` means "nothing before", the zero padding of `__call__`). Feeding a signal
chunk by chunk gives the same outputs as one call on the whole of it, with no overlap
recomputed, so the codec's tokenizer can walk a 10-minute file (or a 30 s one, in chunks
that fit the CPU caches) with bounded memory. `__call__` is `stream` from an empty past.
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
    """ELU(x) = x for x > 0, exp(x) - 1 otherwise. Written with exp rather than expm1
    (jax.nn.elu): XLA:CPU evaluates expm1 at half the rate, and the codec applies ELU to
    every activation twice per residual unit; the difference, near x = 0, is ~1e-7."""
    return jnp.where(x > 0, x, jnp.exp(jnp.minimum(x, 0)) - 1)


def conv_flops(kernel: int, c_in: int, c_out: int, t_out: int, groups: int = 1) -> int:
    """Multiply-adds x 2 of one conv over one example: 2 * K * Cin/groups * Cout * T_out."""
    return 2 * kernel * (c_in // groups) * c_out * t_out


def _single_channel_conv(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """A valid stride-1 conv with one input or one output channel (the codec's stem and
    head) as a matmul: XLA:CPU runs such convs at ~5% of its matmul rate, 2-3x slower than
    this. One input channel: gather the K taps into columns, then multiply. One output
    channel: multiply first (reading the wide input once), then sum the K shifted taps."""
    k, c_in, c_out = kernel.shape
    t = x.shape[1] - (k - 1) * dilation
    if c_in == 1:
        cols = jnp.concatenate([x[:, i * dilation:i * dilation + t] for i in range(k)], axis=-1)
        return cols @ kernel.reshape(k, c_out)
    taps = x @ kernel.transpose(1, 0, 2).reshape(c_in, k * c_out)
    taps = taps.reshape(*taps.shape[:2], k, c_out)
    return sum(taps[:, i * dilation:i * dilation + t, i] for i in range(k))


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
        return self.stream(x, None)[0]

    def init_stream(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.pad, self.shape[1]), self.dtype)

    def stream(self, x: jax.Array, state: jax.Array | None):
        """state: the last `pad` input samples before `x` ([b, pad, c_in]) or None for zeros.
        XLA folds the concatenation with zeros into the conv's own padding, so `__call__`
        costs what a padded conv costs."""
        x = x.astype(self.dtype)
        past = self.init_stream(x.shape[0]) if state is None else state
        x = jnp.concatenate([past, x], axis=1) if self.pad else x
        kernel = self.kernel[...].astype(self.dtype)
        if self.stride == 1 and 1 in self.shape[1:]:
            y = _single_channel_conv(x, kernel, self.dilation)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, window_strides=(self.stride,), padding=((0, 0),),
                rhs_dilation=(self.dilation,), dimension_numbers=_DIMS)
        y = constrain(y + self.bias[...].astype(self.dtype), ACTIVATION)
        return y, (None if state is None else x[:, x.shape[1] - self.pad:])

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
        # Input frames before a chunk whose outputs still overlap the chunk's first sample.
        self.context = (kernel - 1) // stride

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.stream(x, None)[0]

    def init_stream(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.context, self.shape[1]), self.dtype)

    def stream(self, x: jax.Array, state: jax.Array | None):
        """state: the last `context` input frames before `x` ([b, context, c_in]) or None.

        Polyphase form: with the kernel zero-padded to m = context + 1 whole strides, the
        `stride` output samples of frame t are sum_i x[t - i] @ W[i*stride:(i+1)*stride],
        one matmul of the m stacked frames [b, T, m*c_in] by [m*c_in, stride*c_out]. That
        is exactly the dense work `flops` counts; XLA:CPU's lhs-dilated conv (the textbook
        form) ran 10-40% slower on the codec's shapes."""
        k, c_in, c_out = self.shape
        s, m = self.stride, self.context + 1
        x = x.astype(self.dtype)
        past = self.init_stream(x.shape[0]) if state is None else state
        x = jnp.concatenate([past, x], axis=1) if self.context else x
        t = x.shape[1] - self.context
        frames = jnp.concatenate([x[:, m - 1 - i:m - 1 - i + t] for i in range(m)], axis=-1)
        w = jnp.pad(self.kernel[...].astype(self.dtype), ((0, m * s - k), (0, 0), (0, 0)))
        w = w.reshape(m, s, c_in, c_out).transpose(0, 2, 1, 3).reshape(m * c_in, s * c_out)
        y = (frames @ w).reshape(x.shape[0], t * s, c_out)
        y = constrain(y + self.bias[...].astype(self.dtype), ACTIVATION)
        return y, (None if state is None else x[:, x.shape[1] - self.context:])

    def flops(self, t_in: int) -> int:
        # The dense work of a direct transposed conv: every input frame meets every tap once.
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
        return self.stream(x, None)[0]

    def init_stream(self, batch: int):
        return self.conv.init_stream(batch)  # the 1x1 projection keeps no past

    def stream(self, x: jax.Array, state):
        h, state = self.conv.stream(elu(x), state)
        return x + self.proj(elu(h)), state

    def flops(self, t: int) -> int:
        return self.conv.flops(t) + self.proj.flops(t)


DILATIONS = (1, 3, 9)


class Chain(nnx.Module):
    """Layers applied in order, each optionally after an ELU (`steps()`: [(layer, elu_first)]),
    callable on a whole signal or streamed: the state is the list of the layers' states."""

    def steps(self) -> list[tuple[nnx.Module, bool]]:
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.stream(x, None)[0]

    def init_stream(self, batch: int) -> list:
        return [layer.init_stream(batch) for layer, _ in self.steps()]

    def stream(self, x: jax.Array, state):
        steps = self.steps()
        states = [None] * len(steps) if state is None else list(state)
        for i, (layer, elu_first) in enumerate(steps):
            x, states[i] = layer.stream(elu(x) if elu_first else x, states[i])
        return x, (None if state is None else states)


class EncoderBlock(Chain):
    """Residual units at `c_in` channels, then ELU and a strided conv (K = 2 * stride)
    to `c_out` channels: time / stride."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, kernel: int = 7, compress: int = 1,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.units = nnx.List([ResidualUnit(c_in, d, kernel=kernel, compress=compress, dtype=dtype,
                                            rngs=rngs)
                               for d in DILATIONS])
        self.down = CausalConv1d(c_in, c_out, 2 * stride, stride=stride, dtype=dtype, rngs=rngs)

    def steps(self):
        return [(u, False) for u in self.units] + [(self.down, True)]

    def flops(self, t: int) -> int:
        return sum(u.flops(t) for u in self.units) + self.down.flops(t)


class DecoderBlock(Chain):
    """ELU and a causal transposed conv (K = 2 * stride) to `c_out` channels: time * stride,
    then residual units at `c_out` channels."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, kernel: int = 7, compress: int = 1,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.up = CausalConvTranspose1d(c_in, c_out, 2 * stride, stride=stride, dtype=dtype, rngs=rngs)
        self.units = nnx.List([ResidualUnit(c_out, d, kernel=kernel, compress=compress, dtype=dtype,
                                            rngs=rngs)
                               for d in DILATIONS])

    def steps(self):
        return [(self.up, True)] + [(u, False) for u in self.units]

    def flops(self, t: int) -> int:
        t_up = t * self.up.stride
        return self.up.flops(t) + sum(u.flops(t_up) for u in self.units)
