"""The audio tower: unit embeddings, padding frames never reach the pooled vector, silence
is finite (forward and gradient), and clip windowing (1 s hop, last window at the end)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mufm.mulan.audio import AudioTower, window_starts
from mufm.mulan.embed import BadInputError, MuLan
from mufm.mulan.model import MuLanModel
from tests.mulan.common import AUDIO, MODEL, U

W = AUDIO.window_samples  # 24000 (1 s)


@pytest.fixture(scope="module")
def tower():
    return AudioTower(AUDIO, rngs=nnx.Rngs(0))


def tone(n, f=440.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 24_000
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def test_embeddings_are_unit_and_padding_is_masked(tower):
    n = W // 2
    clean = np.zeros((2, W), np.float32)
    clean[:, :n] = tone(n)
    noisy = clean.copy()
    noisy[1, n + 960:] = np.random.default_rng(3).uniform(-1, 1, W - n - 960)  # junk past the length
    lengths = jnp.asarray([W, n], jnp.int32)
    e1, e2 = tower(clean, lengths), tower(noisy, lengths)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(e1), axis=1), 1.0, rtol=8 * U)
    # Frames past length // 960 are masked out of attention, conv and pool. The junk starts
    # one frame after the last valid one so no valid frame's STFT window reaches it.
    np.testing.assert_allclose(np.asarray(e2[1]), np.asarray(e1[1]), atol=1e-6)
    assert not np.allclose(np.asarray(e1[0]), np.asarray(e1[1]), atol=1e-3)  # length matters


def test_silence_is_finite_forward_and_backward(tower):
    silent = jnp.zeros((2, W), jnp.float32)
    e = tower(silent, jnp.asarray([W, 0], jnp.int32))  # even a row with no valid frame
    assert bool(jnp.all(jnp.isfinite(e)))
    graphdef, params, rest = nnx.split(tower, nnx.Param, ...)
    g = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(silent, jnp.asarray([W, 0]))[:, 0]))(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))


def test_window_starts():
    assert window_starts(500, 1000, 100).tolist() == [0]
    assert window_starts(1000, 1000, 100).tolist() == [0]
    assert window_starts(1300, 1000, 100).tolist() == [0, 100, 200, 300]
    assert window_starts(1350, 1000, 100).tolist() == [0, 100, 200, 300, 350]  # ends at the end


def test_clip_embedding_is_the_renormalised_window_mean():
    mulan = MuLan(MuLanModel(MODEL, rngs=nnx.Rngs(0)), batch=4)
    clip = np.concatenate([tone(W, 300.0), tone(W + W // 4, 900.0, seed=1)])  # 2.25 s
    windows, lengths = mulan.clip_windows(clip)
    hop = AUDIO.hop_samples
    starts = [0, hop, 2 * hop, len(clip) - W]  # 0, 0.5, 1.0 s, then the one ending at 2.25 s
    assert len(windows) == 4 and lengths.tolist() == [W] * 4
    for w, s in zip(windows, starts):
        np.testing.assert_array_equal(w, clip[s:s + W])
    each = mulan.embed_windows(windows, lengths)
    mean = each.mean(0)
    got = mulan.embed_clip(clip)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean), atol=16 * U)
    # The batch size of the jitted program does not change the result.
    one = MuLan(mulan.model, batch=1)
    np.testing.assert_allclose(one.embed_clip(clip), got, atol=1e-6)
    # A clip shorter than a window: one padded window; shorter than min_seconds: refused.
    short = mulan.embed_clip(clip[:W * 3 // 4])
    assert short.shape == (128,) and np.isfinite(short).all()
    with pytest.raises(BadInputError, match="shorter than MuLan's minimum"):
        mulan.embed_clip(clip[:W // 4])
    with pytest.raises(BadInputError, match="non-finite"):
        mulan.embed_clip(np.full(W, np.nan, np.float32))
    with pytest.raises(BadInputError, match="no word piece"):
        mulan.embed_text([""])
