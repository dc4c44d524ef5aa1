"""MuLan evaluation (markdown + JSON): retrieval, zero-shot attributes, pair cosines, tokens."""
from __future__ import annotations

import numpy as np


def ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of the matching candidate (column i for row i) among each row's scores;
    ties count against the match (a constant scorer ranks every match last)."""
    diag = np.diagonal(scores)[:, None]
    return np.sum(scores >= diag, axis=1) - 1
