"""Band-limited resampling (libsoxr, very-high-quality) and channel downmix."""
from __future__ import annotations

import numpy as np
import soxr


def downmix(x: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` (or ``[frames]``) -> mono ``[frames]`` by channel mean."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    return x.mean(axis=1, dtype=np.float64).astype(np.float32) if x.shape[1] > 1 else x[:, 0]


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resamples mono or ``[frames, channels]`` audio with an anti-aliasing (sinc) filter."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"bad sample rates {sr_in} -> {sr_out}")
    return soxr.resample(np.asarray(x,
                                    dtype=np.float32), sr_in, sr_out,
                         quality="VHQ").astype(np.float32)
