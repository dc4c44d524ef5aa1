"""Differentiable STFT and mel spectrograms in JAX (fp32), for codec losses, the complex-STFT
discriminator and codec metrics.

Conventions: periodic Hann window, frames of `n_fft` samples every `hop`, `center=True`
reflect-pads n_fft // 2 on both sides (librosa's default) so frame i is centred on sample
i * hop. Mel scale is HTK (2595 log10(1 + f / 700)) with triangular filters, no area
normalisation; filters narrower than one FFT bin at small n_fft are simply empty (zero).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def hann_window(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def frame(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """[..., n] -> [..., 1 + (n - n_fft) // hop, n_fft] (no padding)."""
    n = x.shape[-1]
    if n < n_fft:
        raise ValueError(f"signal of {n} samples is shorter than one frame of {n_fft}")
    count = 1 + (n - n_fft) // hop
    idx = np.arange(count)[:, None] * hop + np.arange(n_fft)[None, :]
    return x[..., idx]


def stft(x: jax.Array, n_fft: int, hop: int, *, center: bool = True) -> jax.Array:
    """Complex STFT [..., frames, n_fft // 2 + 1] of a real signal [..., n], in fp32."""
    x = x.astype(jnp.float32)
    if center:
        pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        x = jnp.pad(x, pad, mode="reflect" if x.shape[-1] > n_fft // 2 else "constant")
    frames = frame(x, n_fft, hop) * hann_window(n_fft)
    return jnp.fft.rfft(frames, axis=-1)


def magnitude(spec: jax.Array, eps: float = 1e-9) -> jax.Array:
    # sqrt has an infinite slope at 0; a silent bin must not produce NaN gradients.
    return jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + eps)


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=64)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] triangular HTK-mel filters (peak 1)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lower[None]) / (centre - lower)[None]
    down = (upper[None] - freqs[:, None]) / (upper - centre)[None]
    fb = np.maximum(0.0, np.minimum(up, down))
    fb.setflags(write=False)
    return fb.astype(np.float32)


def mel_spectrogram(x: jax.Array, *, sample_rate: int, n_fft: int, hop: int, n_mels: int,
                    power: float = 1.0, center: bool = True) -> jax.Array:
    """[..., n] -> [..., frames, n_mels] mel magnitude (power=1) or power (power=2)."""
    mag = magnitude(stft(x, n_fft, hop, center=center))
    if power != 1.0:
        mag = mag ** power
    return mag @ jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels))


def log_mel(x: jax.Array, *, eps: float = 1e-5, **kwargs) -> jax.Array:
    return jnp.log(mel_spectrogram(x, **kwargs) + eps)


def mel_windows(lo_log2: int = 6, hi_log2: int = 11) -> tuple[int, ...]:
    """The multi-scale window lengths 2^lo .. 2^hi (SoundStream: 64 .. 2048)."""
    return tuple(2 ** e for e in range(lo_log2, hi_log2 + 1))

