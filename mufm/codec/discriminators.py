"""Codec GAN discriminators (SoundStream): three multi-rate waveform discriminators (MelGAN
style, on the signal at 1x, 2x and 4x average-pool downsampling) and one complex-STFT
discriminator (W=1024, H=256 at 24 kHz).

Each discriminator returns (logits, features): logits [b, t'] (a score per time step, which
the hinge losses average) and the list of intermediate activations that feature matching
compares. Waveform discriminators compute in `dtype`; the STFT discriminator always computes
in fp32 (its input spans magnitudes from silence to full scale and the FFT itself is fp32).
"""
from __future__ import annotations

import dataclasses
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.layers.dtypes import DTYPES
from mufm.layers.linear import fan_in_init, param
from mufm.layers.spectral import stft
from mufm.parallel.logical import constrain

@gin.configurable
@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    num_wave_scales: int = 3  # 1x, 2x, 4x
    wave_channels: int = 16  # first layer; x4 per strided layer up to wave_max_channels
    wave_max_channels: int = 1024
    wave_downsample_layers: int = 4  # stride-4 grouped convs (MelGAN)
    wave_group_size: int = 4  # input channels per group in the strided convs
    stft_channels: int = 32
    stft_window: int = 1024
    stft_hop: int = 256
    stft_strides: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (1, 2), (2, 2), (1, 2), (2, 2))
    dtype: str = "float32"  # waveform discriminators; the STFT one is always fp32

    def __post_init__(self):
        object.__setattr__(self, "stft_strides", tuple(tuple(int(v) for v in s) for s in self.stft_strides))
        if self.dtype not in DTYPES:
            raise ValueError(f"DiscriminatorConfig.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")


def leaky_relu(x):
    return jax.nn.leaky_relu(x, 0.2)


class Conv(nnx.Module):
    """N-d 'same'-padded conv, channels last; kernel axes (conv_width..., conv_in, conv_out)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, ...], *, stride=None, groups: int = 1,
                 padding: str | None = "SAME", dtype=jnp.float32, rngs: nnx.Rngs):
        nd = len(kernel)
        if c_in % groups or c_out % groups:
            raise ValueError(f"channels {c_in}->{c_out} not divisible into {groups} groups")
        shape = tuple(kernel) + (c_in // groups, c_out)
        self.kernel = param(rngs, fan_in_init(tuple(range(nd + 1)), nd + 1), shape,
                            ("conv_width",) * nd + ("conv_in", "conv_out"))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (c_out,), ("conv_out",))
        self.stride = tuple(stride) if stride is not None else (1,) * nd
        self.groups, self.dtype, self.padding = groups, dtype, padding
        letters = "HW"[-nd:] if nd <= 2 else None
        self.dims = ("N" + letters + "C", letters + "IO", "N" + letters + "C")

    def __call__(self, x):
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride, self.padding,
            feature_group_count=self.groups, dimension_numbers=self.dims)
        return y + self.bias[...].astype(self.dtype)


class WaveDiscriminator(nnx.Module):
    """MelGAN: conv15 -> n x grouped conv41/stride4 -> conv5 -> conv3 to one logit."""

    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        dt = DTYPES[cfg.dtype]
        ch = cfg.wave_channels
        layers = [Conv(1, ch, (15,), dtype=dt, rngs=rngs)]
        for _ in range(cfg.wave_downsample_layers):
            out = min(ch * 4, cfg.wave_max_channels)
            groups = max(1, ch // cfg.wave_group_size)
            while out % groups:
                groups //= 2
            layers.append(Conv(ch, out, (41,), stride=(4,), groups=groups, dtype=dt, rngs=rngs))
            ch = out
        layers.append(Conv(ch, ch, (5,), dtype=dt, rngs=rngs))
        self.layers = nnx.List(layers)
        self.out = Conv(ch, 1, (3,), dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array):
        """x [b, n] -> (logits [b, t'], features)."""
        h, feats = x[..., None], []
        for layer in self.layers:
            h = constrain(leaky_relu(layer(h)), ("batch", "time", "channels"))
            feats.append(h)
        return self.out(h)[..., 0].astype(jnp.float32), feats


def avg_pool_2x(x: jax.Array) -> jax.Array:
    """MelGAN's AvgPool1d(4, stride 2, padding 1, count_include_pad=False) on [b, n]."""
    window, strides, pad = (1, 4), (1, 2), ((0, 0), (1, 1))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    # Samples per window (3 at the padded edges, else 4), from the static length on the host:
    # a reduce_window over ones is a constant XLA spends seconds folding at every compile.
    real = np.pad(np.ones(x.shape[-1], np.float32), (1, 1))
    starts = 2 * np.arange(total.shape[-1])
    count = real[starts[:, None] + np.arange(4)[None, :]].sum(1)
    return total / count


class STFTDiscriminator(nnx.Module):
    """SoundStream's STFT discriminator on [real, imag] of the complex STFT (time x freq):
    conv 7x7 to C, six residual blocks (3x3 conv, then a (s_t+2)x(s_f+2) conv with stride
    (s_t, s_f); channels doubling every other block), then a 1 x F' conv to one logit per
    remaining time step."""

    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        dt = jnp.float32
        c = cfg.stft_channels
        self.window, self.hop = cfg.stft_window, cfg.stft_hop
        self.stem = Conv(2, c, (7, 7), dtype=dt, rngs=rngs)
        blocks, ch, freq = [], c, cfg.stft_window // 2 + 1
        for i, (st, sf) in enumerate(cfg.stft_strides):
            out = c * 2 ** ((i + 1) // 2)
            blocks.append(nnx.Dict(
                conv=Conv(ch, ch, (3, 3), dtype=dt, rngs=rngs),
                down=Conv(ch, out, (st + 2, sf + 2), stride=(st, sf), dtype=dt, rngs=rngs),
                skip=Conv(ch, out, (1, 1), stride=(st, sf), dtype=dt, rngs=rngs)))
            ch, freq = out, math.ceil(freq / sf)
        self.blocks = nnx.List(blocks)
        self.out = Conv(ch, 1, (1, freq), padding="VALID", dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array):
        spec = stft(x.astype(jnp.float32), self.window, self.hop)  # [b, frames, freq]
        h = jnp.stack([jnp.real(spec), jnp.imag(spec)], -1)
        h = leaky_relu(self.stem(h))
        feats = [h]
        for blk in self.blocks:
            y = blk["down"](leaky_relu(blk["conv"](h)))
            h = leaky_relu(y + blk["skip"](h))
            feats.append(h)
        return self.out(h)[..., 0, 0], feats


class Discriminators(nnx.Module):
    """All codec discriminators; `__call__(wave [b, n])` -> [(logits, features)] per one."""

    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wave = nnx.List([WaveDiscriminator(cfg, rngs=rngs) for _ in range(cfg.num_wave_scales)])
        self.stft = STFTDiscriminator(cfg, rngs=rngs)

    def __call__(self, wave: jax.Array):
        outputs, x = [], wave.astype(jnp.float32)
        for i, disc in enumerate(self.wave):
            if i:
                x = avg_pool_2x(x)
            outputs.append(disc(x))
        outputs.append(self.stft(wave))
        return outputs


def build_discriminators(cfg: DiscriminatorConfig, seed: int = 1) -> Discriminators:
    return Discriminators(cfg, rngs=nnx.Rngs(params=seed))
