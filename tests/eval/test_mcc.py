"""MuLan cycle consistency (mufm/eval/mcc.py) on embeddings whose answer is known."""
import numpy as np
import pytest

from mufm.eval.mcc import cycle_consistency


def test_aligned_random_and_bad_embeddings():
    rng = np.random.default_rng(0)
    text = rng.standard_normal((50, 64))
    same = cycle_consistency(text, 3 * text)  # scale does not matter
    assert same["matched"] == pytest.approx(1.0)
    # Independent directions in 64 dimensions: cos ~ N(0, 1/64); the mean of 2450 such has
    # std ~0.0025, matched (50 terms) ~0.018: 0.02 on mismatched is 8 sigma.
    assert same["mismatched"] == pytest.approx(0.0, abs=0.02)
    noise = cycle_consistency(text, rng.standard_normal((50, 64)))
    assert abs(noise["matched"]) < 5 * 0.018 and abs(noise["margin"]) < 5 * 0.02
    with pytest.raises(ValueError, match="same n"):
        cycle_consistency(text, text[:10])
    with pytest.raises(ValueError, match="all zeros"):
        cycle_consistency(np.zeros((3, 4)), np.ones((3, 4)))
