"""Memorization (mufm/eval/memorization.py) on planted copies."""
import numpy as np
import pytest

from mufm.eval.memorization import TokenIndex, mean_window_entropy, memorization

RNG = np.random.default_rng(0)
TRAIN = [RNG.integers(0, 1024, 3000), RNG.integers(0, 1024, 500), np.full(10, -1)]


def brute_force(seq, n, k):
    """{"exact", "near"}: every run of `seq` against every training run, token by token."""
    train = np.concatenate([np.lib.stride_tricks.sliding_window_view(t[t >= 0], n)
                            for t in TRAIN if (t >= 0).sum() >= n])
    d = np.array([np.min(np.count_nonzero(train != r, axis=1))
                  for r in np.lib.stride_tricks.sliding_window_view(seq, n)])
    return {"runs": len(d), "exact": int(np.sum(d == 0)), "near": int(np.sum(d <= k))}


def test_a_planted_copy_is_found_exactly_and_near_copies_within_k():
    index = TokenIndex(TRAIN, n=50, k=3)
    assert index.num_runs == (3000 - 49) + (500 - 49)
    fresh = RNG.integers(0, 1024, 400)  # 1024^50 runs: a chance match is impossible
    assert memorization(index, [fresh]) == dict(runs=351, exact=0, near=0, n=50, k=3,
                                                exact_fraction=0.0, near_fraction=0.0)
    planted = fresh.copy()
    planted[100:160] = TRAIN[0][1000:1060]  # 60 tokens copied: 11 runs of 50 lie inside
    got = index.match(planted)
    # Near: also the 3 + 3 runs that stick out of the copy by 1 to 3 tokens.
    assert got == {"runs": 351, "exact": 11, "near": 17} == brute_force(planted, 50, 3)
    near = planted.copy()
    near[[105, 130, 155]] = (near[[105, 130, 155]] + 1) % 1024  # substitutions
    got = index.match(near)
    assert got["exact"] == 0 and got == brute_force(near, 50, 3)
    near[120] = (near[120] + 1) % 1024
    assert index.match(near) == brute_force(near, 50, 3)
    assert index.distance(TRAIN[1][7:57]) == 0 and index.distance(fresh[:50]) == 4  # k + 1


def test_runs_across_padding_and_bad_arguments():
    index = TokenIndex(TRAIN, n=5)
    assert index.match(np.array([-1, -1]))["runs"] == 0
    with pytest.raises(ValueError, match="0 <= k < n"):
        TokenIndex(TRAIN, n=5, k=5)


def test_window_entropy_of_constant_and_uniform_windows():
    assert mean_window_entropy([np.zeros(250, int)]) == 0.0
    # 125 distinct ids per window: log2(125) bits exactly.
    assert mean_window_entropy([np.arange(250) % 125]) == pytest.approx(np.log2(125))
    assert np.isnan(mean_window_entropy([np.arange(10)]))
