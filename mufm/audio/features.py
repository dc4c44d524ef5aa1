"""Analysis features in numpy: log-mel spectrogram and chroma (pitch-class energy)."""
from __future__ import annotations

import functools

import numpy as np


def _frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    n = 1 + (x.shape[0] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    return x[idx] * np.hanning(n_fft).astype(np.float32)[None, :]


def power_spectrogram(x: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """``[frames, n_fft // 2 + 1]`` power spectrum of mono audio (Hann window)."""
    return np.abs(np.fft.rfft(_frames(x, n_fft, hop), axis=-1)) ** 2


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` triangular HTK-mel filters, area-normalised (Slaney style)."""
    fmax = fmax or sample_rate / 2
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    tri *= (2.0 / (hi - lo))
    return tri.T.astype(np.float32)


def log_mel(x: np.ndarray, sample_rate: int = 24000, n_fft: int = 1024, hop: int = 240,
            n_mels: int = 64, eps: float = 1e-5) -> np.ndarray:
    """``[frames, n_mels]`` natural-log mel power spectrogram."""
    spec = power_spectrogram(x, n_fft, hop)
    return np.log(spec @ mel_filterbank(sample_rate, n_fft, n_mels) + eps).astype(np.float32)


def chroma(x: np.ndarray, sample_rate: int = 24000, n_fft: int = 8192, hop: int = 2048,
           fmin: float = 55.0, fmax: float = 2000.0) -> np.ndarray:
    """Length-12 pitch-class energy profile (C=0 .. B=11), summed over time, sums to 1.

    Each FFT bin between ``fmin`` and ``fmax`` adds its magnitude to the pitch class of its
    nearest equal-tempered pitch (A4 = 440 Hz). Coarse but enough to check that rendered
    audio carries the pitch classes of its score.
    """
    mag = np.sqrt(power_spectrogram(x, n_fft, hop)).sum(axis=0)
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    keep = (freqs >= fmin) & (freqs <= fmax)
    midi = np.round(69 + 12 * np.log2(freqs[keep] / 440.0)).astype(int)
    out = np.bincount(midi % 12, weights=mag[keep], minlength=12)
    total = out.sum()
    return (out / total if total > 0 else out).astype(np.float32)
