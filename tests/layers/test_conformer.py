"""Conformer stack: shapes and parameter axes, padding never reaches valid frames, scanned
equals unrolled (and a prefix of layers equals those layers), dropout from explicit keys."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mufm.layers.conformer import ConformerConfig, ConformerStack

U = 2.0 ** -24  # fp32 unit roundoff
CFG = ConformerConfig(d_model=32, num_layers=3, num_heads=4, d_ff=64, conv_kernel=5,
                      relpos_num_buckets=8, relpos_max_distance=16)


def frames(b=2, t=12, d=32, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, t, d), jnp.float32)


def rounding_tolerance(cfg: ConformerConfig, length: int) -> float:
    """Two fp32 evaluations that differ only in summation order (another fusion of the same
    ops) lie within 2 n u per sum of n terms, relative to the terms (Higham 3.1); the
    blocks' sums add up (each ends in a LayerNorm, so scales stay ~1). Per block: 2 FFs
    (d_model in, d_ff out), 5 LayerNorms (2 sums of d_model each), q/k/v (d_model), scores
    (head_dim), softmax and values (length each), attention out (heads x head_dim), the
    conv module's 2 pointwise-in (d_model), its taps (conv_kernel), its norm (2 d_model)
    and pointwise out (d_model)."""
    d = cfg.d_model
    block = (2 * (d + cfg.d_ff) + 5 * 2 * d + 3 * d + cfg.kv_dim + 2 * length
             + cfg.num_heads * cfg.kv_dim + 2 * d + cfg.conv_kernel + 2 * d + d)
    return 2 * cfg.num_layers * block * U


def test_shapes_and_every_parameter_has_logical_axes():
    stack = ConformerStack(CFG, rngs=nnx.Rngs(0))
    x = frames()
    y = stack(x, jnp.ones(x.shape[:2]))
    assert y.shape == x.shape and y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
    params = nnx.state(stack, nnx.Param)
    leaves = jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert len(leaves) > 20
    for v in leaves:
        axes = v.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == v[...].ndim, (axes, v[...].shape)
        # Scanned blocks carry the leading `layers` axis; the shared position table does not.
        assert all(isinstance(a, str) for a in axes[1:]), axes


@pytest.mark.parametrize("scan", [True, False])
def test_padded_frames_do_not_change_valid_outputs(scan):
    cfg = ConformerConfig(**{**CFG.__dict__, "scan_layers": scan})
    stack = ConformerStack(cfg, rngs=nnx.Rngs(0))
    x = frames()
    lengths = np.array([7, 12])
    mask = jnp.asarray(np.arange(12)[None] < lengths[:, None], jnp.float32)
    noise = 5.0 * frames(seed=2)
    changed = jnp.where(mask[..., None] > 0, x, noise)
    a, b = stack(x, mask), stack(changed, mask)
    # Masked keys get weight exp(-1e9) = 0 and the conv sees zeros: the valid frames add
    # exact zeros where the padded ones were, so they are bitwise equal.
    np.testing.assert_array_equal(a[0, :7], b[0, :7])
    np.testing.assert_array_equal(a[1], b[1])
    # ... and the test would see a leak: without the mask the padded frames do matter.
    c = stack(changed, jnp.ones_like(mask))
    assert float(jnp.abs(c[0, :7] - a[0, :7]).max()) > 1e-3


def test_scanned_equals_unrolled_and_prefix_of_layers():
    unrolled = ConformerStack(ConformerConfig(**{**CFG.__dict__, "scan_layers": False}),
                              rngs=nnx.Rngs(0))
    scanned = ConformerStack(CFG, rngs=nnx.Rngs(1))
    blocks = [nnx.state(b, nnx.Param) for b in unrolled.blocks]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    nnx.update(scanned.blocks, stacked)
    nnx.update(scanned.relpos, nnx.state(unrolled.relpos, nnx.Param))
    x = frames()
    mask = jnp.asarray(np.arange(12)[None] < np.array([[9], [12]]), jnp.float32)
    for n in (1, 3):
        want, got = unrolled(x, mask, num_layers=n), scanned(x, mask, num_layers=n)
        tol = rounding_tolerance(CFG, 12) * float(jnp.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    # A prefix really is fewer layers, and 0 layers is the identity.
    assert float(jnp.abs(scanned(x, mask, num_layers=1) - scanned(x, mask)).max()) > 1e-2
    np.testing.assert_array_equal(scanned(x, mask, num_layers=0), x)


def test_dropout_comes_from_the_key():
    cfg = ConformerConfig(**{**CFG.__dict__, "dropout_rate": 0.2})
    stack = ConformerStack(cfg, rngs=nnx.Rngs(0))
    x, mask = frames(), jnp.ones((2, 12))
    k1, k2 = jax.random.key(5), jax.random.key(6)
    np.testing.assert_array_equal(stack(x, mask, key=k1), stack(x, mask, key=k1))
    assert float(jnp.abs(stack(x, mask, key=k1) - stack(x, mask, key=k2)).max()) > 1e-3
    assert float(jnp.abs(stack(x, mask, key=k1) - stack(x, mask)).max()) > 1e-3
