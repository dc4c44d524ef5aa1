"""LayerNorm and Dense's bias against numpy (the MiniLM port builds on both)."""
import numpy as np
from flax import nnx

from mufm.layers.linear import Dense
from mufm.layers.norms import LayerNorm


def test_layer_norm_matches_numpy_with_a_large_mean():
    rng = np.random.default_rng(0)
    # A mean 1e3 x the spread: the fp32 mean itself errs by ~1e3 u = 6e-5 per unit of spread
    # (measured 1.3e-4 on the normalised values, so 2e-3 after a random scale of |s| < ~3),
    # while the one-pass variance E[x^2] - E[x]^2 errs by 0.5 here: centring is tested.
    x = (1e3 + rng.standard_normal((3, 5, 16))).astype(np.float32)
    norm = LayerNorm(16, eps=1e-12, rngs=nnx.Rngs(0))
    norm.scale.set_value(rng.standard_normal(16).astype(np.float32))
    norm.bias.set_value(rng.standard_normal(16).astype(np.float32))
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-12)
    ref = ref * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])
    np.testing.assert_allclose(np.asarray(norm(x)), ref, atol=2e-3)


def test_dense_bias_is_added_over_the_output_axes():
    dense = Dense((4,), (2, 3), in_axes=("embed",), out_axes=("heads", "kv"), use_bias=True,
                  rngs=nnx.Rngs(0))
    assert dense.bias.get_metadata()["out_sharding"] == ("heads", "kv")
    dense.bias.set_value(np.arange(6, dtype=np.float32).reshape(2, 3))
    x = np.ones((5, 4), np.float32)
    want = np.einsum("bi,ijk->bjk", x, np.asarray(dense.kernel[...])) + np.arange(6).reshape(2, 3)
    np.testing.assert_allclose(np.asarray(dense(x)), want, rtol=1e-6, atol=1e-6)
    assert not hasattr(Dense((4,), (2,), in_axes=("embed",), out_axes=("mlp",), rngs=nnx.Rngs(0)),
                       "bias")
