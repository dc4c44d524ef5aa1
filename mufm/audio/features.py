"""Analysis features in numpy: the mel filterbank, the log-mel spectrogram and chroma
(pitch-class energy)."""
from __future__ import annotations

import functools

import numpy as np

from mufm.audio import SAMPLE_RATE


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


def hz_to_mel(f):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=64)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` triangular HTK-mel filters, peak 1 (no area normalisation).

    The one filterbank: the codec's differentiable mel spectrogram (mufm.layers.spectral)
    takes it as a constant. Filters narrower than one FFT bin at small n_fft are simply
    empty (zero). Cached, so the array is read-only: copy it to change it.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lower[None]) / (centre - lower)[None]
    down = (upper[None] - freqs[:, None]) / (upper - centre)[None]
    fb = np.maximum(0.0, np.minimum(up, down)).astype(np.float32)
    fb.setflags(write=False)
    return fb


# The floor under every log-mel: ln(mel + LOG_MEL_FLOOR).
LOG_MEL_FLOOR = 1e-5
# Inside the magnitude's square root: sqrt has an infinite slope at 0, so the
# differentiable twin (mufm.layers.spectral.magnitude) needs it for finite gradients on
# silence, and the definition carries it so both agree on silent bins too.
MAGNITUDE_EPS = 1e-9


def log_mel(x: np.ndarray, sample_rate: int = SAMPLE_RATE, n_fft: int = 1024,
            hop: int | None = None, n_mels: int = 64, power: float = 1.0) -> np.ndarray:
    """``[..., frames, n_mels]`` log-mel spectrogram of ``[..., n]`` audio: the one log-mel.

    Periodic Hann window of ``n_fft`` samples every ``hop`` (default n_fft // 4), frames
    centred (reflect-padded by n_fft // 2 on both sides, librosa's default) so frame i sits
    at sample i * hop; magnitude sqrt(re^2 + im^2 + MAGNITUDE_EPS) raised to ``power``;
    HTK filters of `mel_filterbank`; ln(mel + LOG_MEL_FLOOR). The codec's mel loss and the
    mel distance (mufm.eval.audio_metrics) compute this in JAX with
    `mufm.layers.spectral.mel_spectrogram`; tests/audio checks that the two agree.
    """
    hop = n_fft // 4 if hop is None else hop
    x = np.asarray(x, np.float32)
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    x = np.pad(x, pad, mode="reflect" if x.shape[-1] > n_fft // 2 else "constant")
    if x.shape[-1] < n_fft:
        raise ValueError(f"signal of {x.shape[-1]} samples is shorter than one frame of {n_fft}")
    count = 1 + (x.shape[-1] - n_fft) // hop
    idx = np.arange(count)[:, None] * hop + np.arange(n_fft)[None, :]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    spec = np.fft.rfft(x[..., idx] * window, axis=-1)
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + MAGNITUDE_EPS) ** power
    return np.log(mag @ mel_filterbank(sample_rate, n_fft, n_mels) + LOG_MEL_FLOOR).astype(np.float32)


def chroma(x: np.ndarray, sample_rate: int = SAMPLE_RATE, n_fft: int = 8192, hop: int = 2048,
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
