"""Audio metrics shared by families: SI-SNR and the multi-scale log-mel distance.

All functions take host waveforms (numpy, float, [-1, 1], mono) at one sample rate.

- SI-SNR (dB): both signals made zero-mean; target = <est, ref> ref / ||ref||^2;
  10 log10(||target||^2 / ||est - target||^2). Higher is better; blind to gain.
- multi-scale mel distance: mean over windows 2^6 .. 2^11 (hop = window / 4, 64 HTK mel
  bands, magnitude) of mean |ln(mel_ref + 1e-5) - ln(mel_est + 1e-5)|, i.e. of the
  difference of `mufm.audio.features.log_mel`s. Lower is better;
  a gain error g adds about |ln g| (the codec's reconstruction loss uses the same bands).
  Its log floor rewards filling empty bands with noise: never quote it alone.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mufm.audio import SAMPLE_RATE
from mufm.audio.features import LOG_MEL_FLOOR
from mufm.layers.spectral import mel_spectrogram, mel_windows


def si_snr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """SI-SNR in dB over the last axis (leading axes are a batch)."""
    ref = np.asarray(reference, np.float64)
    est = np.asarray(estimate, np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: reference {ref.shape} vs estimate {est.shape}")
    ref = ref - ref.mean(-1, keepdims=True)
    est = est - est.mean(-1, keepdims=True)
    scale = np.sum(est * ref, -1, keepdims=True) / (np.sum(ref * ref, -1, keepdims=True) + eps)
    target = scale * ref
    noise = est - target
    return 10.0 * np.log10((np.sum(target ** 2, -1) + eps) / (np.sum(noise ** 2, -1) + eps))


def _log_mel_l1(ref, est, *, sample_rate, n_fft, n_mels):
    # mufm.audio.features.log_mel (the one log-mel), in JAX so that it runs jitted.
    kw = dict(sample_rate=sample_rate, n_fft=n_fft, hop=n_fft // 4, n_mels=n_mels)
    a = jnp.log(mel_spectrogram(ref, **kw) + LOG_MEL_FLOOR)
    b = jnp.log(mel_spectrogram(est, **kw) + LOG_MEL_FLOOR)
    return jnp.mean(jnp.abs(a - b), axis=(-1, -2))


_log_mel_l1_jit = jax.jit(_log_mel_l1, static_argnames=("sample_rate", "n_fft", "n_mels"))


def mel_distance(reference: np.ndarray, estimate: np.ndarray, *, sample_rate: int = SAMPLE_RATE,
                 windows: Sequence[int] = mel_windows(6, 11), n_mels: int = 64) -> np.ndarray:
    """Multi-scale log-mel L1 distance over the last axis (see module docstring)."""
    ref = jnp.asarray(reference, jnp.float32)
    est = jnp.asarray(estimate, jnp.float32)
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: reference {ref.shape} vs estimate {est.shape}")
    per_scale = [_log_mel_l1_jit(ref, est, sample_rate=sample_rate, n_fft=int(w), n_mels=n_mels)
                 for w in windows]
    return np.asarray(jnp.mean(jnp.stack(per_scale), 0))


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def score(references: Sequence[np.ndarray], estimates: Sequence[np.ndarray],
          sample_rate: int) -> dict[str, float]:
    """Mean SI-SNR and mel distance over clips (clips may differ in length)."""
    if len(references) != len(estimates) or not references:
        raise ValueError(f"{len(references)} references vs {len(estimates)} estimates")
    snr, mel = [], []
    for ref, est in zip(references, estimates):
        ref = np.asarray(ref, np.float32).reshape(-1)
        est = fit_length(np.asarray(est, np.float32).reshape(-1), len(ref))
        snr.append(float(si_snr(ref, est)))
        mel.append(float(mel_distance(ref[None], est[None], sample_rate=sample_rate)[0]))
    return {"si_snr_db": float(np.mean(snr)), "mel_distance": float(np.mean(mel)),
            "clips": len(references)}
