"""Conditioning tokens: the RVQ fit is deterministic, encoding is the greedy residual
nearest code, and the saved tokens load on their own and give the same ids."""
import numpy as np

from mufm.mulan.tokens import MuLanTokens


def embeddings(n=400, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fit_and_encode_are_deterministic_and_survive_saving(tmp_path):
    x = embeddings()
    a = MuLanTokens.fit(x, num_levels=12, codebook_size=32, iters=5, seed=3)
    b = MuLanTokens.fit(x, num_levels=12, codebook_size=32, iters=5, seed=3)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    ids = a.encode(x[:20])
    assert ids.shape == (20, 12) and ids.dtype == np.int32 and ids.max() < 32
    np.testing.assert_array_equal(a.encode(x[:20]), ids)
    # Level 0 is the nearest level-0 code; level 1 the nearest code to the residual.
    d0 = ((x[:20, None] - a.codebooks[0][None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids[:, 0], d0.argmin(1))
    r = x[:20] - a.codebooks[0][ids[:, 0]]
    np.testing.assert_array_equal(ids[:, 1], ((r[:, None] - a.codebooks[1][None]) ** 2).sum(-1).argmin(1))
    # More levels reconstruct better (each level fits the residual the last left).
    err = [np.mean((a.decode(ids[:, :q]) - x[:20]) ** 2) for q in (1, 4, 12)]
    assert err[0] > err[1] > err[2]
    loaded = MuLanTokens.load(a.save(str(tmp_path / "mulan_tokens")))
    np.testing.assert_array_equal(loaded.encode(x[:20]), ids)
    assert loaded.info["codebook_size"] == 32 and loaded.info["fitted_on"] == 400
