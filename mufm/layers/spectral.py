"""Differentiable STFT and mel spectrograms in JAX (fp32), for codec losses, the complex-STFT
discriminator and codec metrics.

Conventions: periodic Hann window, frames of `n_fft` samples every `hop`, `center=True`
reflect-pads n_fft // 2 on both sides (librosa's default) so frame i is centred on sample
i * hop. The mel filters are `mufm.audio.features.mel_filterbank` (HTK, peak 1), and
ln(mel_spectrogram + LOG_MEL_FLOOR) is `mufm.audio.features.log_mel`, the one log-mel, in
JAX (tests/audio checks that they agree).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mufm.audio.features import MAGNITUDE_EPS, mel_filterbank


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


def magnitude(spec: jax.Array, eps: float = MAGNITUDE_EPS) -> jax.Array:
    # sqrt has an infinite slope at 0; a silent bin must not produce NaN gradients.
    return jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + eps)


def mel_spectrogram(x: jax.Array, *, sample_rate: int, n_fft: int, hop: int, n_mels: int,
                    power: float = 1.0, center: bool = True) -> jax.Array:
    """[..., n] -> [..., frames, n_mels] mel magnitude (power=1) or power (power=2)."""
    mag = magnitude(stft(x, n_fft, hop, center=center))
    if power != 1.0:
        mag = mag ** power
    return mag @ jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels))


def mel_windows(lo_log2: int = 6, hi_log2: int = 11) -> tuple[int, ...]:
    """The multi-scale window lengths 2^lo .. 2^hi (SoundStream: 64 .. 2048)."""
    return tuple(2 ** e for e in range(lo_log2, hi_log2 + 1))

