"""Loudness: ITU-R BS.1770 integrated loudness (pyloudnorm) and normalisation with a peak cap."""
from __future__ import annotations

import numpy as np
import pyloudnorm

TARGET_LUFS = -20.0
PEAK_CEILING = 10 ** (-1.0 / 20)  # -1 dBFS


def integrated_lufs(x: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness of mono audio; -inf for silence or clips under 0.4 s."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < int(0.4 * sample_rate) or not np.any(x):
        return float("-inf")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(x))


def normalize(x: np.ndarray, sample_rate: int, target_lufs: float = TARGET_LUFS,
              peak: float = PEAK_CEILING) -> tuple[np.ndarray, float]:
    """Scales to ``target_lufs`` (then down if a peak would pass ``peak``). Returns (audio, gain_db)."""
    x = np.asarray(x, dtype=np.float32)
    lufs = integrated_lufs(x, sample_rate)
    gain = 1.0 if not np.isfinite(lufs) else 10 ** ((target_lufs - lufs) / 20)
    top = float(np.max(np.abs(x))) * gain if x.size else 0.0
    if top > peak:
        gain *= peak / top
    return (x * gain).astype(np.float32), float(20 * np.log10(gain)) if gain > 0 else 0.0
