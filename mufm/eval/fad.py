"""Fréchet audio distance (Kilgour et al. 2019) between two sets of embeddings: each set
summarised by the mean and covariance of its per-clip (or per-frame) embeddings, the
distance being the Fréchet distance of the two Gaussians,

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

The embedding is pluggable: anything mapping audio to vectors (MuLan's audio tower, a
ported tagger, a user's own weights). The matrix square root is taken of the symmetric
S_a^(1/2) S_b S_a^(1/2) by eigendecomposition, which has the same trace as (S_a S_b)^(1/2)
and stays real and stable where scipy's sqrtm of the non-symmetric product can return
complex noise for rank-deficient covariances (fewer clips than dimensions).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Gaussian(NamedTuple):
    mean: np.ndarray  # [d]
    cov: np.ndarray  # [d, d]
    count: int


def fit_gaussian(embeddings: np.ndarray) -> Gaussian:
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"FAD needs embeddings [n >= 2, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings have NaN or infinite values")
    return Gaussian(x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), len(x))


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"embeddings of width {a.mean.shape} and {b.mean.shape}")
    root_a = _psd_sqrt(a.cov)
    cross = _psd_sqrt(root_a @ b.cov @ root_a)
    d = float(np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov) + np.trace(b.cov)
              - 2 * np.trace(cross))
    return max(d, 0.0)


def fad(embeddings_a: np.ndarray, embeddings_b: np.ndarray) -> float:
    """The Fréchet distance between the Gaussians fitted to two embedding sets."""
    return frechet_distance(fit_gaussian(embeddings_a), fit_gaussian(embeddings_b))
