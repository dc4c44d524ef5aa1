"""Does the model copy its training data? MusicLM's memorization figure (Agostinelli et al.
2023, sec. 5.5) on semantic tokens: how many generated runs of `n` tokens occur in the
training set exactly, and how many within a Hamming distance of `k` (k of the n tokens
different); and the mean empirical entropy of generated 125-token windows (MusicLM: 4.6
bits), next to the training set's.

`TokenIndex` is built once over the training sequences. Every run of n tokens is hashed
(a polynomial hash mod 2^64, vectorised) into a sorted array, so an exact lookup is a
binary search plus a check of the candidate's tokens (no false positive survives it). For
Hamming <= k, each run is split into k + 1 blocks: a run within k substitutions of a
training run agrees with it exactly on at least one block (pigeonhole), so the blocks'
hashes find every candidate and the candidates are checked token by token.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from mufm.data.pretokenize import ENTROPY_WINDOW, window_entropies

_BASE = np.uint64(1_000_003)


@functools.lru_cache(maxsize=None)
def _powers(width: int) -> np.ndarray:
    """_BASE^0 .. _BASE^(width - 1) mod 2^64: computed once per block width, as every
    lookup hashes k + 1 blocks of each generated run."""
    powers = np.ones(width, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(1, width):
            powers[i] = powers[i - 1] * _BASE
    powers.flags.writeable = False
    return powers


def _hashes(windows: np.ndarray) -> np.ndarray:
    """Polynomial hashes [m] of windows [m, w] of token ids (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        return (windows.astype(np.uint64) + np.uint64(1)) @ _powers(windows.shape[1])


def _runs(seq: np.ndarray, n: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(seq, n) if len(seq) >= n else \
        np.zeros((0, n), seq.dtype)


class TokenIndex:
    """Every run of `n` tokens of the training sequences, findable exactly and within
    Hamming distance `k`."""

    def __init__(self, sequences: Sequence[np.ndarray], n: int, k: int = 0):
        if n < 1 or not 0 <= k < n:
            raise ValueError(f"runs of n={n} tokens with k={k} substitutions: need 0 <= k < n")
        self.n, self.k = n, k
        self.sequences = [np.asarray(s, np.int64) for s in sequences]
        self.sequences = [s[s >= 0] for s in self.sequences]  # padding is not a token
        refs = [(i, j) for i, s in enumerate(self.sequences) for j in range(max(0, len(s) - n + 1))]
        self.refs = np.asarray(refs, np.int64).reshape(-1, 2)  # (sequence, start) per run
        self.blocks = np.array_split(np.arange(n), k + 1)  # block b covers these offsets
        keys = []
        for b in self.blocks:
            parts = [_hashes(_runs(s, n)[:, b]) for s in self.sequences]
            keys.append(np.concatenate(parts) if parts else np.zeros(0, np.uint64))
        self._order = [np.argsort(h, kind="stable") for h in keys]
        self._sorted = [h[o] for h, o in zip(keys, self._order)]
        self.num_runs = len(self.refs)

    def _candidates(self, block: int, key: np.uint64) -> np.ndarray:
        h = self._sorted[block]
        lo, hi = np.searchsorted(h, key, "left"), np.searchsorted(h, key, "right")
        return self._order[block][lo:hi]

    def distance(self, run: np.ndarray) -> int:
        """The least Hamming distance of `run` [n] to a training run, if it is <= k;
        else k + 1."""
        run = np.asarray(run, np.int64)
        best = self.k + 1
        for b, offsets in enumerate(self.blocks):
            key = _hashes(run[offsets][None])[0]
            for r in self._candidates(b, key):
                i, j = self.refs[r]
                d = int(np.count_nonzero(self.sequences[i][j:j + self.n] != run))
                best = min(best, d)
                if best == 0:
                    return 0
        return best

    def match(self, sequence: np.ndarray, stride: int = 1) -> dict:
        """Over the runs of `sequence` starting every `stride` tokens: {"runs", "exact",
        "near"} counts ("near": within k substitutions, exact ones included)."""
        seq = np.asarray(sequence, np.int64)
        runs = _runs(seq[seq >= 0], self.n)[::stride]
        d = np.array([self.distance(r) for r in runs], np.int64)
        return {"runs": int(len(runs)), "exact": int(np.sum(d == 0)),
                "near": int(np.sum(d <= self.k))}


def memorization(index: TokenIndex, generated: Sequence[np.ndarray], stride: int = 1) -> dict:
    """Fractions of generated runs found exactly and within k in the training tokens."""
    totals = {"runs": 0, "exact": 0, "near": 0}
    for seq in generated:
        for key, value in index.match(seq, stride).items():
            totals[key] += value
    runs = max(totals["runs"], 1)
    return dict(totals, n=index.n, k=index.k, exact_fraction=totals["exact"] / runs,
                near_fraction=totals["near"] / runs)


def mean_window_entropy(sequences: Sequence[np.ndarray], window: int = ENTROPY_WINDOW) -> float:
    """Mean empirical entropy (bits) of the whole `window`-token windows of the sequences;
    NaN if none is that long."""
    values = np.concatenate([window_entropies(s, window) for s in sequences] or [np.zeros(0)])
    return float(values.mean()) if len(values) else float("nan")
