"""MuLan cycle consistency (MCC, MusicLM sec. 5.1): the mean cosine between the MuLan text
embedding of each prompt and the MuLan audio embedding of the music generated from it,
beside the mean over mismatched pairs (prompt i with the audio of prompt j != i: the level
any audio reaches against any text) and, run on real clips and their own captions, the
level real music reaches with this MuLan."""
from __future__ import annotations

import numpy as np


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"embeddings must be finite [n, d], got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError("an embedding is all zeros")
    return x / norm


def cycle_consistency(text: np.ndarray, audio: np.ndarray) -> dict:
    """{"matched": mean cos(text_i, audio_i), "mismatched": mean over i != j, "margin":
    their difference, "n"} for text and audio embeddings [n, d] of the same n prompts."""
    t, a = _unit(text), _unit(audio)
    if t.shape != a.shape or len(t) < 2:
        raise ValueError(f"text {t.shape} and audio {a.shape} embeddings: need the same n >= 2")
    cos = t @ a.T
    n = len(t)
    matched = float(np.trace(cos) / n)
    mismatched = float((cos.sum() - np.trace(cos)) / (n * (n - 1)))
    return {"matched": matched, "mismatched": mismatched, "margin": matched - mismatched, "n": n}
