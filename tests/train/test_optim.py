"""Optimizer plumbing: what weight decay touches, and per-group updates of a GAN."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mufm.lm.model import LMConfig, StageLM
from mufm.train.optim import OptimizerConfig, decay_mask, make_optimizer, per_group


def _paths(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_decay_mask_takes_matrices_not_biases_scales_or_bias_tables():
    cfg = LMConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                   position="relative", scan_layers=False, dtype="float32")
    model = nnx.eval_shape(lambda: StageLM(cfg, rngs=nnx.Rngs(0)))
    mask = _paths(decay_mask(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    relpos = [p for p in mask if "bias" in p.split("/")[-1]]
    assert relpos, sorted(mask)  # the relative-position table is in the model ...
    assert not any(mask[p] for p in relpos)  # ... and not decayed, although it is 2-D
    assert not any(v for p, v in mask.items() if p.endswith("scale"))
    kernels = [p for p in mask if p.endswith("kernel") or p.endswith("embedding")]
    assert kernels and all(mask[p] for p in kernels)


def test_adamw_leaves_undecayed_leaves_alone_at_zero_gradient():
    tx, _ = make_optimizer(OptimizerConfig(learning_rate=0.1, warmup_steps=0, schedule="constant",
                                           weight_decay=0.5, clip_norm=None), 10)
    params = {"dense": {"kernel": jnp.ones((2, 2))}, "rel": {"bias": jnp.ones((4, 2))}}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["rel"]["bias"]).max()) == 0.0
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)


def test_per_group_updates_only_the_groups_given():
    tx = per_group({"g": optax.adam(0.1), "d": optax.adam(0.1)})
    params = {"g": jnp.ones(3), "d": jnp.ones(2)}
    state = tx.init(params)
    updates, new_state = tx.update({"g": jnp.ones(3)}, state, params)
    assert set(updates) == {"g"}
    # The discriminator's Adam statistics are the very same objects: not run over zeros.
    assert all(a is b for a, b in zip(jax.tree.leaves(new_state["d"]), jax.tree.leaves(state["d"])))
    assert int(new_state["g"][0].count) == 1


def test_run_paths_keep_bucket_urls_and_absolutise_local_ones(tmp_path, monkeypatch):
    import os

    from mufm.train.checkpoint import run_path, write_gin_config

    assert str(run_path("gs://bucket/runs/stage")) == "gs://bucket/runs/stage"
    monkeypatch.chdir(tmp_path)
    assert str(run_path("runs/x")) == os.path.join(str(tmp_path), "runs", "x")
    path = write_gin_config("runs/x", "A = 1\n")
    assert open(path).read() == "A = 1\n"
