"""The semantic model: exactly 25 frames per second of 24 kHz audio, span-masking
statistics against their derivation, InfoNCE / MLM / diversity against numpy written
here, distractors drawn from the right frames, and a forward pass whose gradient reaches
every part (the straight-through quantizer included)."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mufm.semantic.model import (SemanticConfig, SemanticModel, codebook_statistics, info_nce,
                                 mlm_cross_entropy, sample_negatives, span_mask)

U = 2.0 ** -24  # fp32 unit roundoff
TINY = SemanticConfig(n_mels=16, subsample_channels=4, d_model=16, num_heads=2, d_ff=32,
                      conv_kernel=3, contrastive_layers=1, mlm_layers=1, codebook_groups=2,
                      codebook_size=8, codevector_dim=8, final_dim=8, num_negatives=4,
                      mask_prob=0.2, mask_length=2, relpos_num_buckets=8, relpos_max_distance=16)


@pytest.fixture(scope="module")
def model():
    return SemanticModel(TINY, rngs=nnx.Rngs(0))


def test_frame_rate_is_25_hz_of_24_khz_audio(model):
    assert TINY.hop == 960 and TINY.frame_rate == 25.0
    # n // 960 frames: a partial trailing frame (n % 960 samples) is not a frame.
    for n in (960, 961, 2 * 960 - 1, 5 * 960, 5 * 960 + 959, 24_000):
        wave = jnp.zeros((1, n), jnp.float32)
        assert model.encoder(wave).shape == (1, n // 960, TINY.d_model), n
    wave = 0.1 * jax.random.normal(jax.random.key(0), (2, 24_000))
    for layer in (0, 1, 2):
        assert model.embed(wave, layer).shape == (2, 25, TINY.d_model)
    with pytest.raises(ValueError, match="outside"):
        model.embed(wave, 3)


def unmasked_covariance(t: int, p: float, m: int) -> np.ndarray:
    """Cov of the 'unmasked' indicators Y_i = prod_{s in W_i} (1 - start_s), with
    W_i = [max(0, i - m + 1), i]: E[Y_i Y_j] = (1 - p)^|W_i u W_j|."""
    lo = np.maximum(0, np.arange(t) - m + 1)
    hi = np.arange(t)
    size = hi - lo + 1
    union = np.where(np.maximum(lo[:, None], lo[None]) <= np.minimum(hi[:, None], hi[None]) + 1,
                     np.maximum(hi[:, None], hi[None]) - np.minimum(lo[:, None], lo[None]) + 1,
                     size[:, None] + size[None])
    q = 1.0 - p
    return q ** union - q ** (size[:, None] + size[None])


def test_span_mask_statistics():
    b, t, p, m = 512, 200, 0.065, 10
    valid = jnp.ones((b, t))
    masked = np.asarray(span_mask(jax.random.key(3), valid, p, m))
    # Frame i is masked unless none of the min(i + 1, m) frames before it started a span.
    expected = np.mean(1.0 - (1.0 - p) ** np.minimum(np.arange(t) + 1, m))
    assert 0.45 < expected < 0.49  # ~1 - 0.935^10 = 0.489 for interior frames (wav2vec 2.0)
    # The utterances are independent: the mean fraction's std is sqrt(Var(sum) / b) / t.
    std = math.sqrt(unmasked_covariance(t, p, m).sum() / b) / t
    assert abs(masked.mean() - expected) < 6 * std, (masked.mean(), expected, std)
    # Every run of masked frames is a union of whole spans: >= m long unless cut by the end.
    for row in masked[:64]:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            assert stop - start >= m or stop == t, (start, stop)
    # Only valid frames are masked.
    lengths = jnp.arange(b) % t
    valid = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.float32)
    partial = np.asarray(span_mask(jax.random.key(4), valid, p, m))
    assert not np.any(partial & (np.asarray(valid) == 0))


def test_negatives_are_other_masked_frames_of_the_same_utterance():
    masked = jnp.asarray([[1, 1, 0, 1, 0, 1, 1, 0],
                          [0, 0, 1, 0, 0, 0, 0, 0],
                          [1, 0, 0, 0, 0, 0, 0, 1]], bool)
    idx, usable = sample_negatives(jax.random.key(0), masked, 50)
    idx, usable, m = np.asarray(idx), np.asarray(usable), np.asarray(masked)
    assert usable.tolist() == [[True] * 8, [False] * 8, [True] * 8]
    for b in (0, 2):
        for t in np.flatnonzero(m[b]):
            others = set(np.flatnonzero(m[b])) - {t}
            assert set(idx[b, t]) <= others
            if b == 0:  # 50 uniform draws over 4 frames hit each (miss prob 4 * 0.75^50)
                assert set(idx[b, t]) == others


def np_info_nce(c, q, ids, masked, negatives, usable, temperature):
    loss = correct = frames = 0.0
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    for b, t in zip(*np.nonzero(masked)):
        logits = [cos(c[b, t], q[b, t]) / temperature]
        for n in negatives[b, t]:
            same = np.array_equal(ids[b, n], ids[b, t])
            logits.append(-np.inf if same or not usable[b, t] else cos(c[b, t], q[b, n]) / temperature)
        logits = np.asarray(logits)
        top = logits.max()
        loss += top + np.log(np.sum(np.exp(logits - top))) - logits[0]
        correct += float(np.argmax(logits) == 0)
        frames += 1
    return loss, correct, frames


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    b, t, f, k, kappa = 2, 7, 3, 4, 0.1
    c = rng.standard_normal((b, t, f)).astype(np.float32)
    q = rng.standard_normal((b, t, f)).astype(np.float32)
    ids = rng.integers(0, 3, (b, t, 2)).astype(np.int32)  # few codes: some distractors repeat it
    masked = rng.random((b, t)) < 0.6
    masked[:, :2] = True
    neg, usable = sample_negatives(jax.random.key(1), jnp.asarray(masked), k)
    got = info_nce(jnp.asarray(c), jnp.asarray(q), jnp.asarray(ids), jnp.asarray(masked), neg,
                   usable, kappa)
    want = np_info_nce(c, q, ids, masked, np.asarray(neg), np.asarray(usable), kappa)
    assert got[1] == want[1] and got[2] == want[2]
    # Each term: cosines of f products and logits up to 1/kappa, a logsumexp of k + 1
    # terms, then a sum over the masked frames: within (f + k + frames + 8) u of the
    # frames' summed magnitudes (2 / kappa + log(k + 1) each), in float32 vs float64.
    n = want[2]
    tol = (f + k + n + 8) * U * n * (2 / kappa + math.log(k + 1))
    np.testing.assert_allclose(float(got[0]), want[0], rtol=0, atol=tol)
    some_repeat = any(np.array_equal(ids[bb, nn], ids[bb, tt]) for bb, tt in zip(*np.nonzero(masked))
                      for nn in np.asarray(neg)[bb, tt])
    assert some_repeat  # the neg-is-pos rule was exercised


def test_mlm_cross_entropy_matches_numpy():
    rng = np.random.default_rng(1)
    b, t, g, v = 2, 5, 2, 6
    logits = rng.standard_normal((b, t, g, v)).astype(np.float32) * 3
    ids = rng.integers(0, v, (b, t, g)).astype(np.int32)
    masked = rng.random((b, t)) < 0.5
    got = mlm_cross_entropy(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(masked))
    want_loss = want_correct = 0.0
    for bb, tt in zip(*np.nonzero(masked)):
        for gg in range(g):
            row = logits[bb, tt, gg].astype(np.float64)
            want_loss += np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[bb, tt, gg]]
            want_correct += float(np.argmax(row) == ids[bb, tt, gg])
    n = int(masked.sum()) * g
    assert float(got[2]) == n and float(got[1]) == want_correct
    # A logsumexp of v terms per term, then n terms summed: (v + n + 4) u of the summed
    # magnitudes (each below 2 max|logit| + log v).
    tol = (v + n + 4) * U * n * (2 * np.abs(logits).max() + math.log(v))
    np.testing.assert_allclose(float(got[0]), want_loss, rtol=0, atol=tol)


def test_diversity_loss_is_its_formula():
    rng = np.random.default_rng(2)
    b, t, g, v = 1, 4, 2, 3
    logits = rng.standard_normal((b, t, g, v)).astype(np.float32)
    valid = np.array([[1, 1, 1, 0]], np.float32)  # the padded frame is not counted
    ids = logits.argmax(-1)
    got = codebook_statistics(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(valid))
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    pbar = soft[0, :3].mean(0)  # [g, v]
    perplexity = np.exp(-(pbar * np.log(pbar)).sum(-1))
    want = (g * v - perplexity.sum()) / (g * v)
    # Softmaxes of v terms, a mean of 3 frames, an entropy of v terms, its exp: ~(2v + 8) u
    # relative to perplexities <= v, divided by g v.
    np.testing.assert_allclose(float(got["diversity_loss"]), want, rtol=0, atol=(2 * v + 8) * U)
    hits = np.stack([np.bincount(ids[0, :3, gg], minlength=v) / 3 for gg in range(g)])
    code_ppl = np.mean([np.exp(-sum(h * np.log(h) for h in row if h > 0)) for row in hits])
    np.testing.assert_allclose(float(got["codebook_perplexity"]), code_ppl, rtol=8 * v * U)
    # The extremes: equal use of every codevector costs 0; one code for everything (G V - G) / G V.
    flat = codebook_statistics(jnp.zeros((1, 4, g, v)), jnp.zeros((1, 4, g), jnp.int32), jnp.ones((1, 4)))
    assert abs(float(flat["diversity_loss"])) <= 4 * v * U
    peaked = codebook_statistics(jnp.zeros((1, 4, g, v)).at[..., 0].set(100.0),
                                 jnp.zeros((1, 4, g), jnp.int32), jnp.ones((1, 4)))
    np.testing.assert_allclose(float(peaked["diversity_loss"]), (g * v - g) / (g * v), atol=1e-6)
    assert float(peaked["codebook_perplexity"]) == 1.0


def test_forward_and_gradient_reach_every_part(model):
    wave = 0.1 * jax.random.normal(jax.random.key(0), (2, 24_000))
    lengths = jnp.array([24_000, 15_000])

    def loss(m):
        return m(wave, lengths, key=jax.random.key(1), train=True, temperature=2.0)

    (value, metrics), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    assert np.isfinite(float(value))
    assert 0 < float(metrics["masked_fraction"]) < 1
    # Frames past the second example's length (15000 // 960 = 15 of 25) are never masked.
    assert float(metrics["masked_frames"]) <= 25 + 15
    for name in ("contrastive_accuracy", "mlm_accuracy"):
        assert 0.0 <= float(metrics[name]) <= 1.0
    assert 1.0 <= float(metrics["codebook_perplexity"]) <= TINY.codebook_size
    flat = {jax.tree_util.keystr(p): np.asarray(g) for p, g in
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(grads, nnx.Param)))}
    for part in ("encoder", "contrastive", "quantizer", "'codevectors'", "mlm", "mask_embedding"):
        hit = [k for k in flat if part in k]
        assert hit and any(np.abs(flat[k]).max() > 0 for k in hit), part


def test_quantizer_codes_are_set_by_the_features_not_the_gumbel_noise():
    """At initialisation, on layer-normed features of semantic_base's width, a Gumbel-noised
    draw keeps the noise-free code for most frames. Under fan-in init (logits of std ~1,
    like the Gumbel noise) only ~4% of frames kept it: the targets were noise and training
    stayed at chance; unit-variance weights (fairseq) keep ~88%. The bar is one half: the
    features, not the noise, must decide the code."""
    from mufm.semantic.model import GumbelProductQuantizer

    cfg = SemanticConfig(d_model=256, num_heads=4, codebook_groups=2, codebook_size=256,
                         codevector_dim=256)
    q = GumbelProductQuantizer(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 500, 256))  # unit variance per dimension
    _, clean, _ = q(x)
    _, noisy, _ = q(x, temperature=cfg.gumbel_max_temperature, key=jax.random.key(2))
    assert float(jnp.mean(clean == noisy)) > 0.5


def test_noise_free_quantizer_keeps_the_argmax_and_its_straight_through_gradient():
    """gumbel_noise_scale=0 (semantic_base): training draws are exactly the noise-free codes,
    and the straight-through softmax still sends a gradient to the code logits."""
    from mufm.semantic.model import GumbelProductQuantizer

    cfg = dataclasses.replace(TINY, gumbel_noise_scale=0.0)
    q = GumbelProductQuantizer(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 30, TINY.d_model))
    _, clean, _ = q(x)
    quantized, noisy, _ = q(x, temperature=2.0, key=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(noisy))
    graphdef, state = nnx.split(q)
    grads = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x, temperature=2.0, key=jax.random.key(2))[0] ** 2))(state)
    assert float(jnp.abs(grads["logits"]["kernel"][...]).max()) > 0
