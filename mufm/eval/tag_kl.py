"""KL divergence between the tag predictions of reference and generated audio, pairwise
(reference clip i against the clip generated from its caption), averaged over pairs: the
MusicLM / AudioCraft "KLD" of a tagger (here musicnn's 50 MagnaTagATune tags,
`mufm.eval.musicnn.tag_probs`).

A multi-label tagger's sigmoid outputs do not sum to one, so the KL needs a convention:

- ``"normalized"`` (the default): each row is divided by its sum and treated as one
  categorical distribution over the 50 tags, KL(p || q) = sum_t p_t log(p_t / q_t). This
  is "the KL between the label distributions" as MusicLM describes it, is zero only when
  the two tag profiles are proportional, and stays on one scale whatever the tagger's
  overall confidence.
- ``"bernoulli"``: each tag an independent Bernoulli, the KL summed over tags,
  sum_t [p_t log(p_t / q_t) + (1 - p_t) log((1 - p_t) / (1 - q_t))]: the KL of the
  tagger's full multi-label output distribution.

AudioCraft's metric sums p_t log(p_t / q_t) over unnormalised sigmoid outputs, which is
neither (it can be negative); it is not offered. Direction: KL(reference || generated), as
both AudioCraft and MusicLM; probabilities are clipped to [eps, 1 - eps].
"""
from __future__ import annotations

import numpy as np

EPS = 1e-6


def pairwise_kl(ref_probs: np.ndarray, gen_probs: np.ndarray, mode: str = "normalized",
                eps: float = EPS) -> np.ndarray:
    """``[n]`` KL(ref_i || gen_i) in nats for ``[n, tags]`` probability rows."""
    p = np.asarray(ref_probs, np.float64)
    q = np.asarray(gen_probs, np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"need two [n, tags] arrays of one shape, got {p.shape} and {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError("tag probabilities have NaN or infinite values")
    p = np.clip(p, eps, 1.0 - eps)
    q = np.clip(q, eps, 1.0 - eps)
    if mode == "normalized":
        p = p / p.sum(axis=1, keepdims=True)
        q = q / q.sum(axis=1, keepdims=True)
        return np.sum(p * (np.log(p) - np.log(q)), axis=1)
    if mode == "bernoulli":
        return np.sum(p * (np.log(p) - np.log(q))
                      + (1 - p) * (np.log1p(-p) - np.log1p(-q)), axis=1)
    raise ValueError(f"mode must be 'normalized' or 'bernoulli', not {mode!r}")


def kl_divergence(ref_probs: np.ndarray, gen_probs: np.ndarray, mode: str = "normalized",
                  eps: float = EPS) -> float:
    """Mean over pairs of KL(ref_i || gen_i) (nats); see the module doc for ``mode``."""
    return float(pairwise_kl(ref_probs, gen_probs, mode, eps).mean())
