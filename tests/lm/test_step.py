"""The jitted train step: accumulation, non-finite skipping, schedules."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mufm.lm.model import LMConfig, StageLM
from mufm.parallel.logical import sharding_context
from mufm.parallel.mesh import DEFAULT_RULES, MeshConfig, build_mesh
from mufm.train.optim import OptimizerConfig, make_optimizer, make_schedule
from mufm.train.state import create_train_state, model_spec
from mufm.lm.step import StepConfig, lm_loss, train_step
from tests.lm.rounding import U, rounding_tolerance

CFG = LMConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, dtype="float32")


def _setup(accum=1, devices=1):
    mesh = build_mesh(MeshConfig(ici_parallelism=(-1, 1, 1)), jax.devices()[:devices])
    opt = OptimizerConfig(grad_accum_steps=accum, warmup_steps=0, schedule="constant")
    tx, sched = make_optimizer(opt, 10)
    with sharding_context(mesh, DEFAULT_RULES):
        state, _, spec = create_train_state(lambda r: StageLM(CFG, rngs=r), tx, mesh, DEFAULT_RULES, 0)
    step = jax.jit(functools.partial(train_step, spec=spec, tx=tx, schedule=sched,
                                     cfg=StepConfig(grad_accum_steps=accum, stream_names=("a", "b"))))
    return state, step


def _grads(params, batch):
    """d(summed weighted cross-entropy)/d params: the step's gradient up to a positive
    scale (the weight normaliser, the clip), which keeps every sign."""
    spec = model_spec(lambda r: StageLM(CFG, rngs=r))
    return jax.grad(lambda p: lm_loss(p, {}, spec, batch, None, 0.0, 0)[0])(params)


def _batch(b=4, t=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 64, (b, t)).astype(np.int32)
    inputs = np.concatenate([np.zeros((b, 1), np.int32), tokens[:, :-1]], axis=1)
    weights = np.ones((b, t), np.int32)
    weights[:, -3:] = 0  # padding tail
    streams = (np.arange(t)[None] >= t // 2).astype(np.int32).repeat(b, 0)
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": tokens,
            "decoder_loss_weights": weights, "decoder_stream_ids": streams}


def test_grad_accumulation_matches_one_big_batch():
    s1, step1 = _setup(accum=1)
    s2, step2 = _setup(accum=2)
    batch = _batch()
    grads = _grads(s1.params, batch)  # before the step donates the state
    before = [np.asarray(p) for p in jax.tree.leaves(s1.params)]
    s1, m1 = step1(s1, batch)
    s2, m2 = step2(s2, batch)
    # Two micro-batches change only summation orders: each token's loss goes through
    # matmuls of other shapes (rounding_tolerance of its scale; ce ~ ln 64 bounds the
    # logits it comes from at init), then n = b * t non-negative terms are added in
    # another order (2 n u of their total, Higham 3.1).
    tokens = batch["decoder_target_tokens"].size
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=rounding_tolerance(CFG, 16) + 2 * tokens * U)
    # The gradient's rounding, relative to its scale, bounds its norm's.
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"],
                               rtol=rounding_tolerance(CFG, 16, tokens=tokens))
    # Adam's first update is lr * g / (|g| + eps) (plus weight decay, computed alike):
    # where g stands clear of its rounding error both runs take the same lr * sign(g)
    # step; Adam's ~8 roundings on the way (moments, bias corrections, sqrt, eps,
    # division) move it by at most 16 u lr between them, and the final rounding of
    # p - update by one ulp (<= 2 u |p|). An element whose gradient is within rounding of
    # 0 may step the other way: 2 lr apart.
    lr = OptimizerConfig().learning_rate
    tol = rounding_tolerance(CFG, 16, tokens=tokens)
    stable = 0
    for g, a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        g, a, b = np.asarray(g), np.asarray(a), np.asarray(b)
        clear = np.abs(g) > tol * np.abs(g).max()
        rounding = 2 * U * np.maximum(np.abs(a), np.abs(b)) + 16 * U * lr
        assert np.all(np.abs(a - b)[clear] <= rounding[clear])
        assert np.all(np.abs(a - b) <= 2 * lr + rounding)
        stable += int(clear.sum())
    assert stable > 0.9 * sum(x.size for x in before), stable  # the tight check covers most


def test_per_stream_metrics_split_the_tokens():
    s, step = _setup()
    _, m = step(s, _batch())
    assert {"accuracy/a", "accuracy/b", "loss/a", "loss/b"} <= set(m)
    # Stream b has fewer weighted tokens (the padded tail), both near ln(64) at init.
    assert abs(float(m["loss/a"]) - np.log(64)) < 1.0 and abs(float(m["loss/b"]) - np.log(64)) < 1.0
    assert float(m["tokens"]) == 4 * 13


def test_nonfinite_loss_skips_the_update_and_counts_it():
    s, step = _setup()
    poisoned = jax.tree.map(lambda x: x, s.params)
    poisoned["final_norm"]["scale"] = poisoned["final_norm"]["scale"].at[0].set(jnp.nan)
    s = s.replace(params=poisoned)
    before = jax.tree.map(np.asarray, (s.params, s.opt_state))
    s, m = step(s, _batch())
    assert not np.isfinite(float(m["loss"]))
    assert int(s.nonfinite_skipped) == 1 and int(s.nonfinite_streak) == 1 and int(s.step) == 1
    after = jax.tree.map(np.asarray, (s.params, s.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
    s, m = step(s, _batch())
    assert int(s.nonfinite_streak) == 2


@pytest.mark.parametrize("kind", ["cosine", "rsqrt", "constant"])
def test_schedules_warm_up_then_decay(kind):
    sched = make_schedule(OptimizerConfig(schedule=kind, learning_rate=1.0, warmup_steps=10), 100)
    # At the join, cosine's alpha + (1 - alpha) cos(0) rounds twice in fp32 (rsqrt and
    # constant are exactly the peak); the warm-up's 5 / 10 of the way is exact.
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) <= 2 * U
    assert float(sched(5)) == 0.5
    if kind != "constant":
        assert float(sched(90)) < 0.7
