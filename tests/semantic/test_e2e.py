"""End to end through `python -m mufm.train` on the synthetic audio task: metrics in
TensorBoard, a run stopped at step 3 and resumed ends bitwise equal to an uninterrupted
one, and `mufm.train.restore.load` rebuilds the model for embeddings at 25 Hz."""
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train_runs import REPO, checkpoint_steps, path_name, scalars, train_env

pytestmark = pytest.mark.slow
GIN = "experiments/semantic_synthetic_tiny.gin"


def train(model_dir, *bindings):
    proc = subprocess.run([sys.executable, "-m", "mufm.train", f"--gin_file={GIN}",
                           f'--gin.MODEL_DIR="{model_dir}"', "--gin.CheckpointConfig.save_every=3",
                           "--gin.RunConfig.log_every=3", *bindings],
                          cwd=REPO, env=train_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def saved_state(model_dir, step):
    tree = ocp.StandardCheckpointer().restore(os.path.join(model_dir, "checkpoints", str(step), "state"))
    return {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic_runs")
    ref, resumed = str(root / "ref"), str(root / "resumed")
    train(ref, "--gin.TRAIN_STEPS=6", "--gin.RunConfig.eval_every=6")
    train(resumed, "--gin.TRAIN_STEPS=3", "--gin.RunConfig.eval_every=0")
    train(resumed, "--gin.TRAIN_STEPS=6", "--gin.RunConfig.eval_every=0")
    return ref, resumed


def test_resume_is_bitwise(runs):
    ref, resumed = runs
    assert checkpoint_steps(ref) == [3, 6] and checkpoint_steps(resumed) == [3, 6]
    a, b = saved_state(ref, 6), saved_state(resumed, 6)
    assert a.keys() == b.keys() and any(k.startswith("params/quantizer") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert int(a["step"]) == 6 and int(a["nonfinite_skipped"]) == 0
    # Training changed the parameters (the resumed run is not trivially equal).
    start = saved_state(ref, 3)
    assert any(np.any(start[k] != a[k]) for k in a if k.startswith("params/"))


def test_metrics_are_written(runs):
    ref, _ = runs
    for tag in ("loss", "contrastive_loss", "contrastive_accuracy", "mlm_loss", "mlm_accuracy",
                "codebook_perplexity", "masked_fraction", "diversity_loss", "gumbel_temperature",
                "eval/contrastive_accuracy", "eval/mlm_accuracy", "eval/codebook_perplexity",
                "eval/masked_fraction"):
        got = scalars(ref, tag)
        assert got and all(np.isfinite(v) for v in got.values()), tag
    assert sorted(scalars(ref, "loss")) == [3, 6]
    # The temperature anneals from its maximum (2.0) by 0.999995 per step.
    assert scalars(ref, "gumbel_temperature")[3] < 2.0


def test_loaded_model_embeds_at_25_hz(runs):
    from mufm.train.restore import load

    ref, _ = runs
    loaded = load(ref, family="semantic")
    assert loaded.step == 6
    model = loaded.module()
    cfg = loaded.configs["model"]
    wave = 0.1 * np.sin(np.arange(3 * 24_000 + 500) * 2 * np.pi * 440 / 24_000)[None].astype(np.float32)
    for layer in (0, cfg.contrastive_layers, cfg.num_layers):
        emb = model.embed(wave, layer)
        assert emb.shape == (1, 75, cfg.d_model) and bool(np.all(np.isfinite(emb)))
    # The parameters are the trained ones, not a fresh initialisation.
    state = saved_state(ref, 6)
    np.testing.assert_array_equal(np.asarray(model.mask_embedding[...]), state["params/mask_embedding"])
