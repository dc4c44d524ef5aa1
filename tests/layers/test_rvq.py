"""Residual vector quantizer: EMA codebooks, k-means init, dead-code restart, dropout, purity."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.layers.rvq import CodebookState, ResidualVectorQuantizer, kmeans


def _rvq(**kw):
    args = dict(num_levels=4, codebook_size=16, dim=8, quantizer_dropout=False, dead_threshold=0.0)
    args.update(kw)
    return ResidualVectorQuantizer(args.pop("num_levels"), args.pop("codebook_size"), args.pop("dim"),
                                   rngs=nnx.Rngs(0), **args)


@nnx.jit
def _train(rvq, x, key):
    return rvq(x, train=True, key=key)


@nnx.jit(static_argnames="q")
def _roundtrip(rvq, x, q):
    return rvq.decode(rvq.encode(x, q))


def _data(seed=1, shape=(8, 64, 8)):
    return jax.random.normal(jax.random.key(seed), shape)


def test_error_falls_monotonically_with_levels():
    rvq = _rvq(num_levels=6)
    x = _data()
    for i in range(5):
        _train(rvq, x, jax.random.key(10 + i))
    errors = [float(jnp.mean((x - _roundtrip(rvq, x, q)) ** 2)) for q in range(1, 7)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0], errors


def test_kmeans_initialises_on_first_batch():
    centres = jnp.array([[10.0, 0], [-10, 0], [0, 10], [0, -10]])
    x = centres[jax.random.randint(jax.random.key(0), (4, 32), 0, 4)]
    x = x + 0.01 * jax.random.normal(jax.random.key(1), x.shape)
    rvq = _rvq(num_levels=1, codebook_size=4, dim=2)
    assert int(rvq.initialized[...][0]) == 0
    rvq(x, train=True, key=jax.random.key(2))
    assert int(rvq.initialized[...][0]) == 1
    # Each centre has a code next to it: random normal init would be ~10 away.
    book = np.asarray(rvq.codebook[...][0])
    dist = np.linalg.norm(book[:, None] - np.asarray(centres)[None], axis=-1).min(0)
    assert dist.max() < 0.1, dist


def test_kmeans_weights_exclude_masked_frames():
    x = jnp.concatenate([jnp.zeros((10, 2)), 100 * jnp.ones((10, 2))])
    w = jnp.concatenate([jnp.ones(10), jnp.zeros(10)])
    centroids, sizes = kmeans(jax.random.key(0), x, w, 2, 5)
    assert float(jnp.abs(centroids).max()) < 1e-6 and float(sizes.sum()) == 10


def test_dead_codes_are_restarted_at_batch_frames():
    rvq = _rvq(num_levels=1, codebook_size=16, dead_threshold=1.0)
    x = _data()
    _train(rvq, x, jax.random.key(3))
    # Kill codes 0..4: far away (never chosen) and with zero EMA count.
    rvq.codebook[...] = rvq.codebook[...].at[0, :5].set(1e3)
    rvq.ema_count[...] = rvq.ema_count[...].at[0, :5].set(0.0)
    _, _, aux = _train(rvq, x, jax.random.key(4))
    assert int(aux["restarts"][0]) >= 5
    book = np.asarray(rvq.codebook[...][0, :5])
    frames = np.asarray(x).reshape(-1, 8)
    nearest = np.linalg.norm(book[:, None] - frames[None], axis=-1).min(1)
    assert nearest.max() < 1e-5, nearest  # each restarted code is exactly a batch frame
    assert float(rvq.ema_count[...][0, :5].min()) >= 1.0


def test_quantizer_dropout_covers_every_level_count():
    rvq = _rvq(num_levels=4, quantizer_dropout=True)
    x = _data(shape=(64, 4, 8))
    _train(rvq, x, jax.random.key(0))  # k-means init
    before = nnx.clone(rvq)
    out, codes, aux = _train(rvq, x, jax.random.key(5))
    n_q = np.asarray(aux["num_levels"])
    assert set(n_q.tolist()) == {1, 2, 3, 4}
    # Each example's output is the sum of exactly its first n_q levels (added in level
    # order, as the quantizer does), passed through x + (q - x) for straight-through
    # gradients: two fp32 roundings, within u (|q - x| + |q|) of q.
    books = np.asarray(before.codebook[...])
    xs = np.asarray(x)
    for i in range(len(n_q)):
        expect = sum(books[l][np.asarray(codes[i, :, l])] for l in range(n_q[i]))
        bound = 2.0 ** -24 * (np.abs(expect - xs[i]) + np.abs(expect)) * (1 + 2.0 ** -23)
        assert np.all(np.abs(np.asarray(out[i]) - expect) <= bound), i


def test_straight_through_gradient_and_commitment_gradient():
    rvq = _rvq()
    x = _data()
    rvq(x, train=True, key=jax.random.key(0))
    g_out = jax.grad(lambda v: jnp.sum(rvq(v)[0]))(x)
    # d(x + stop_gradient(q - x))/dx is exactly 1.
    np.testing.assert_array_equal(np.asarray(g_out), 1.0)
    g_commit = jax.grad(lambda v: rvq(v)[2]["commitment_loss"])(x)
    assert float(jnp.abs(g_commit).sum()) > 0


def test_codebook_state_updates_inside_pure_jitted_grad_step():
    rvq = _rvq()
    graphdef, params, state = nnx.split(rvq, nnx.Param, CodebookState)
    assert not jax.tree.leaves(params)  # codebooks are not trainable parameters
    x = _data()

    @jax.jit
    def step(state, x, key):
        def loss(x):
            s = jax.tree.map(lambda a: a, state)  # fresh Variables at this trace level
            model = nnx.merge(graphdef, s)
            out, _, aux = model(x, train=True, key=key)
            return jnp.sum(out ** 2) + aux["commitment_loss"], (nnx.state(model, CodebookState), aux)
        (_, (new_state, aux)), grad = jax.value_and_grad(loss, has_aux=True)(x)
        return new_state, aux, grad

    new_state, aux, grad = step(state, x, jax.random.key(0))
    assert np.asarray(new_state["initialized"][...]).tolist() == [1, 1, 1, 1]
    assert not np.allclose(np.asarray(new_state["codebook"][...]), np.asarray(state["codebook"][...]))
    assert aux["perplexity"].shape == (4,) and aux["restarts"].shape == (4,)
    assert bool(jnp.all(aux["perplexity"] >= 1.0)) and bool(jnp.all(jnp.isfinite(grad)))
    # The input state object is untouched: the step is pure.
    assert np.asarray(state["initialized"][...]).tolist() == [0, 0, 0, 0]


def test_codebook_state_carries_logical_axes():
    rvq = _rvq()
    axes = {p: v.get_metadata()["out_sharding"]
            for p, v in nnx.to_flat_state(nnx.state(rvq, CodebookState))}
    assert axes[("codebook",)] == ("rvq", "codebook", "codebook_dim"), axes
    assert axes[("ema_count",)] == ("rvq", "codebook"), axes
