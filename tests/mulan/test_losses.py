"""The contrastive loss against a hand computation, the temperature clamp, padding rows,
and the global batch: the loss and gradients on an 8-device mesh equal one device's."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mufm.mulan.losses import contrastive_loss, logit_scale
from tests.mulan.common import U


def test_loss_matches_a_hand_computation():
    # Three 2-d unit vectors at known angles: cosines are cos of angle differences.
    ang_a, ang_t = np.array([0.0, 1.0, 2.0]), np.array([0.1, 1.2, 2.5])
    a = np.stack([np.cos(ang_a), np.sin(ang_a)], 1)
    t = np.stack([np.cos(ang_t), np.sin(ang_t)], 1)
    s = 10.0
    L = s * np.cos(ang_a[:, None] - ang_t[None, :])  # logits[i, j]
    rows = [math.log(sum(math.exp(L[i, j]) for j in range(3))) - L[i, i] for i in range(3)]
    cols = [math.log(sum(math.exp(L[j, i]) for j in range(3))) - L[i, i] for i in range(3)]
    want = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    loss, m = contrastive_loss(jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32),
                               jnp.float32(s))
    # Logits up to 10 in fp32: each within ~10 * 4u; logsumexp adds a few u of the result.
    np.testing.assert_allclose(float(loss), want, rtol=0, atol=64 * 10 * U)
    np.testing.assert_allclose(float(m["audio_to_text_loss"]), sum(rows) / 3, atol=64 * 10 * U)
    # Row 2's best caption: t_2 (angle 2.5) vs t_1 (1.2): |2 - 2.5| < |2 - 1.2|: all right.
    assert float(m["audio_to_text_accuracy"]) == 1.0
    # Column 1's best clip: a_1 (1.0, 0.2 away) beats a_2 (2.0, 0.8 away).
    assert float(m["text_to_audio_accuracy"]) == 1.0
    np.testing.assert_allclose(float(m["temperature"]), 0.1, rtol=4 * U)


def test_scale_is_clamped_at_100_and_starts_at_clip_init():
    assert float(logit_scale(jnp.float32(math.log(1 / 0.07)), 100.0)) == np.float32(1 / 0.07)
    np.testing.assert_allclose(float(logit_scale(jnp.float32(9.0), 100.0)), 100.0, rtol=4 * U)
    g = jax.grad(lambda x: logit_scale(x, 100.0))(jnp.float32(9.0))
    assert float(g) == 0.0  # above the clamp the parameter gets no gradient


def test_padding_rows_are_neither_anchors_nor_candidates():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    y = rng.standard_normal((5, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    full, _ = contrastive_loss(jnp.asarray(x[:3]), jnp.asarray(y[:3]), jnp.float32(5.0))
    w = jnp.asarray([1, 1, 1, 0, 0], jnp.float32)
    padded, m = contrastive_loss(jnp.asarray(x), jnp.asarray(y), jnp.float32(5.0), w)
    np.testing.assert_allclose(float(padded), float(full), rtol=16 * U)
    assert float(m["examples"]) == 3.0


def test_global_batch_on_eight_devices_equals_one_device():
    """Each device holds 2 of the 16 examples; the loss (and its gradient) must still see all
    16 x 16 pairs. A per-device loss (local negatives only) would differ by O(1)."""
    rng = np.random.default_rng(1)
    b, d = 16, 128
    a = rng.standard_normal((b, d)).astype(np.float32)
    t = (0.2 * a + rng.standard_normal((b, d))).astype(np.float32)  # cos ~0.2: loss O(1)
    f = lambda a, t, s: contrastive_loss(a / jnp.linalg.norm(a, axis=1, keepdims=True),
                                         t / jnp.linalg.norm(t, axis=1, keepdims=True), s)[0]
    grad = jax.value_and_grad(f, argnums=(0, 1, 2))
    s = jnp.float32(1 / 0.07)
    one = jax.jit(grad)(a, t, s)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sh = NamedSharding(mesh, P("data"))
    eight = jax.jit(grad, in_shardings=(sh, sh, NamedSharding(mesh, P())))(
        jax.device_put(a, sh), jax.device_put(t, sh), s)
    assert eight[1][0].sharding.spec == P("data")  # the gradient stays sharded
    # Reduction order only: logits are D-term dot products (|error| <= D u |s|), the loss a
    # mean of B logsumexps over B terms; gradients are B-term sums of those.
    tol = 2 * (d + 2 * b) * U * float(s)
    np.testing.assert_allclose(float(eight[0]), float(one[0]), rtol=0, atol=tol)
    for g8, g1 in zip(eight[1], one[1]):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=0, atol=tol)
    # A local-negatives loss is far off: the test can see the difference.
    local = np.mean([float(f(a[i:i + 2], t[i:i + 2], s)) for i in range(0, b, 2)])
    assert abs(local - float(one[0])) > 100 * tol
