"""Stage transformer: cache decoding, causality, packing, remat, parameter axes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mufm.lm.model import LMConfig, StageLM, param_count, train_flops_per_token
from mufm.layers.remat import REMAT_POLICIES
from tests.lm.rounding import rounding_tolerance


def tiny(**kw):
    base = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, dtype="float32")
    base.update(kw)
    return LMConfig(**base)


@pytest.mark.parametrize("position", ["rope", "relative"])
@pytest.mark.parametrize("scan", [True, False])
def test_kv_cache_decoding_matches_full_forward(position, scan):
    cfg = tiny(position=position, scan_layers=scan)
    model = StageLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    full = model(tokens)
    cache = model.init_cache(2, 16)
    logits, cache = model.decode(tokens[:, :5], cache, jnp.int32(0))  # prefill
    outs = [logits]
    for i in range(5, 12):  # one token at a time
        logits, cache = model.decode(tokens[:, i:i + 1], cache, jnp.int32(i))
        outs.append(logits)
    # Cached keys and one-row matmuls add the same terms in other orders.
    tol = rounding_tolerance(cfg, 16) * float(jnp.abs(full).max())
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=0, atol=tol)


@pytest.mark.parametrize("position", ["rope", "relative"])
def test_causal(position):
    cfg = tiny(position=position)
    model = StageLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 16), 0, cfg.vocab_size)
    changed = tokens.at[0, 9:].set(3)
    a, b = model(tokens), model(changed)
    np.testing.assert_array_equal(a[0, :9], b[0, :9])
    assert float(jnp.abs(a[0, 9:] - b[0, 9:]).max()) > 1e-3


def test_packed_segments_do_not_see_each_other():
    """Two sequences packed in one row give the logits they give alone."""
    cfg = tiny(position="relative")
    model = StageLM(cfg, rngs=nnx.Rngs(0))
    a = jax.random.randint(jax.random.key(1), (1, 7), 0, cfg.vocab_size)
    b = jax.random.randint(jax.random.key(2), (1, 5), 0, cfg.vocab_size)
    packed = jnp.concatenate([a, b], axis=1)
    seg = jnp.array([[1] * 7 + [2] * 5])
    pos = jnp.array([list(range(7)) + list(range(5))])
    out = model(packed, positions=pos, segment_ids=seg)
    # Masked keys add exact zeros; the rest are the same sums over other shapes.
    tol = rounding_tolerance(cfg, 12) * float(jnp.abs(out).max())
    np.testing.assert_allclose(out[:, :7], model(a), rtol=0, atol=tol)
    np.testing.assert_allclose(out[:, 7:], model(b), rtol=0, atol=tol)


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("policy", sorted(REMAT_POLICIES))
def test_remat_policies_keep_gradients(policy, scan):
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)

    def grads(cfg):
        model = StageLM(cfg, rngs=nnx.Rngs(0))
        return nnx.grad(lambda m: jnp.mean(m(tokens) ** 2))(model)

    ref = jax.tree.leaves(nnx.state(grads(tiny(scan_layers=scan)), nnx.Param))
    got = jax.tree.leaves(nnx.state(grads(tiny(remat_policy=policy, scan_layers=scan)), nnx.Param))
    if not scan:
        # Unscanned, eager: every primitive, recomputed ones included, runs on its own on
        # bitwise-equal inputs, so recomputation gives the very same gradients.
        for r, g in zip(ref, got):
            np.testing.assert_array_equal(g, r)
        return
    # Scanned, each policy compiles its own loop bodies, where XLA may fuse a recomputed
    # forward op into backward ones and round it differently (an FMA, a reduction order).
    tol = rounding_tolerance(tiny(), 8, tokens=tokens.size)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=0, atol=tol * float(np.abs(r).max()))


def _saved_for_backward_bytes(cfg, tokens) -> int:
    """Bytes the backward pass keeps from the forward: the leaves of jax.vjp's closure (the
    residuals, plus the parameters it reads). JAX's tracing and the remat policy decide
    them, not XLA, so the count is the same on every machine."""
    graphdef, params = nnx.split(StageLM(cfg, rngs=nnx.Rngs(0)))
    _, vjp_fn = jax.vjp(lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2), params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp_fn))


@pytest.mark.parametrize("scan", [True, False])
def test_remat_policies_change_what_the_backward_pass_saves(scan):
    batch, length = 2, 8
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, 64)
    saved = {policy: _saved_for_backward_bytes(tiny(remat_policy=policy, scan_layers=scan), tokens)
             for policy in REMAT_POLICIES}
    assert saved["full"] < saved["save_qkv_proj"] < saved["save_proj"] < saved["none"], saved
    # Every projection is a dot with no batch dimension and no other dot in the block is
    # one (attention contracts over batch and heads): "minimal" saves what save_proj does.
    assert saved["minimal"] == saved["save_proj"], saved
    # save_qkv_proj keeps exactly q, k and v beyond "full": 3 x layers x [batch, length,
    # heads x head_dim = d_model] in fp32.
    cfg = tiny()
    assert saved["save_qkv_proj"] - saved["full"] == 3 * cfg.num_layers * batch * length * cfg.d_model * 4


def test_unknown_remat_policy_is_rejected():
    with pytest.raises(ValueError, match="remat_policy"):
        tiny(remat_policy="sometimes")


@pytest.mark.parametrize("kw", [dict(), dict(activation="swiglu"), dict(position="relative"),
                                dict(tie_embeddings=True)])
def test_param_count_formula_matches_model(kw):
    cfg = tiny(**kw)
    model = StageLM(cfg, rngs=nnx.Rngs(0))
    actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert param_count(cfg)["total"] == actual


def test_every_param_has_logical_axes_of_its_rank():
    for scan in (True, False):
        model = StageLM(tiny(scan_layers=scan, position="relative"), rngs=nnx.Rngs(0))
        params = nnx.state(model, nnx.Param)
        for path, var in jax.tree_util.tree_leaves_with_path(
                params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
            axes = var.get_metadata()["out_sharding"]
            assert len(axes) == var[...].ndim, (path, axes)
            if scan and "blocks" in jax.tree_util.keystr(path):
                assert axes[0] == "layers"


def test_dropout_is_keyed():
    cfg = tiny(dropout_rate=0.5)
    model = StageLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
    a = model(tokens, dropout_rng=jax.random.key(0))
    b = model(tokens, dropout_rng=jax.random.key(0))
    c = model(tokens, dropout_rng=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-3
    np.testing.assert_array_equal(model(tokens), model(tokens))  # no key: deterministic


def test_bf16_compute_keeps_fp32_params_and_logits():
    cfg = tiny(dtype="bfloat16")
    model = StageLM(cfg, rngs=nnx.Rngs(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out = model(jnp.zeros((1, 4), jnp.int32))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_flops_formula():
    cfg = tiny()
    n = param_count(cfg)["matmul"]
    assert train_flops_per_token(cfg, 128) == 6 * n + 12 * 2 * 128 * 4 * 8


@pytest.mark.parametrize("block", [1, 3, 4, 16])
def test_causal_query_blocks_give_the_same_logits_and_gradients(block):
    cfg = tiny(position="relative")
    blocked = tiny(position="relative", attention_query_block=block)
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    seg = jnp.array([[1] * 6 + [2] * 4] * 2)
    pos = jnp.array([list(range(6)) + list(range(4))] * 2)

    def run(c):
        model = StageLM(c, rngs=nnx.Rngs(0))
        out = model(tokens, segment_ids=seg, positions=pos)
        g = nnx.grad(lambda m: jnp.mean(m(tokens, segment_ids=seg, positions=pos) ** 2))(model)
        return out, jax.tree.leaves(nnx.state(g, nnx.Param))

    (a, ga), (b, gb) = run(cfg), run(blocked)
    # Skipped key blocks are masked ones (exact zeros); the rest are the same sums in
    # blocks.
    tol = rounding_tolerance(cfg, 10)
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * float(jnp.abs(a).max()))
    tol = rounding_tolerance(cfg, 10, tokens=tokens.size)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(x, y, rtol=0, atol=tol * float(jnp.abs(x).max()))


def test_flops_count_the_attention_blocks_executed():
    full, blocked = tiny(), tiny(attention_query_block=32)
    n = param_count(full)["matmul"]
    # 4 blocks of 32 over 128 tokens: mean keys per query = (32*32+32*64+32*96+32*128)/128 = 80
    assert train_flops_per_token(blocked, 128) == 6 * n + 12 * 2 * 80 * 4 * 8
    assert train_flops_per_token(blocked, 128) < train_flops_per_token(full, 128)
