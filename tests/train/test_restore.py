"""Trained models load from their MODEL_DIR alone: two codec runs of different shapes and a
stage-LM run, loaded side by side in one process whose gin state holds conflicting
bindings, give exactly the outputs each gives when loaded alone in a fresh process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train_runs import REPO, train_env

pytestmark = pytest.mark.slow

CODEC_GIN = "experiments/codec_synthetic_tiny.gin"
WAVE_SEED, TOKENS_SEED = 0, 1

# Each script runs in a fresh interpreter with the same devices (XLA:CPU may pick other
# kernels for another device count, so both sides must run alike to compare bitwise).
ALONE = """
import sys, numpy as np
from tests.train.test_restore import outputs
np.save(sys.argv[2], outputs(sys.argv[1]))
"""
# All runs in one process, whose gin state holds bindings that contradict every run.
TOGETHER = """
import sys, numpy as np
from mufm import gin_flags
from tests.train.test_restore import CODEC_GIN, outputs
gin_flags.parse([CODEC_GIN], ['MODEL_DIR="/tmp/other"', "CodecConfig.channels=5",
                              "CodecConfig.num_levels=2"], finalize=False)
out, dirs = sys.argv[1], sys.argv[2:]
np.savez(out, *[outputs(d) for d in dirs])
"""


def _python(script, *args):
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=train_env(1),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def outputs(model_dir: str) -> np.ndarray:
    """What the loaded model computes on a fixed input: a codec's round trip, an LM's logits."""
    import jax

    from mufm.train.restore import load

    loaded = load(model_dir)
    model = loaded.module()
    if loaded.family == "codec":
        wave = 0.1 * np.random.default_rng(WAVE_SEED).standard_normal((1, 4800)).astype(np.float32)
        recon, _ = jax.jit(lambda w: model(w))(wave)
        return np.asarray(recon)
    tokens = np.random.default_rng(TOKENS_SEED).integers(0, 100, (2, 16)).astype(np.int32)
    return np.asarray(jax.jit(lambda t: model(t))(tokens))


def _train(module_args, model_dir):
    proc = subprocess.run([sys.executable, "-m", "mufm.train", *module_args,
                           f'--gin.MODEL_DIR="{model_dir}"', "--gin.TRAIN_STEPS=2",
                           "--gin.CheckpointConfig.save_every=2"],
                          cwd=REPO, env=train_env(1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("loadable")
    runs = {"codec_a": str(root / "codec_a"), "codec_b": str(root / "codec_b"),
            "lm": str(root / "lm")}
    _train([f"--gin_file={CODEC_GIN}", "--gin.GANConfig.discriminator_start=1"], runs["codec_a"])
    _train([f"--gin_file={CODEC_GIN}", "--gin.GANConfig.discriminator_start=1",
            "--gin.CodecConfig.channels=6", "--gin.CodecConfig.codebook_size=32"], runs["codec_b"])
    _train(["--gin_file=experiments/synthetic_tiny.gin", "--gin.DataConfig.sequence_length=64",
            "--gin.DataConfig.batch_size=8"], runs["lm"])
    return runs


def test_model_config_is_json_without_gin(three_runs):
    with open(os.path.join(three_runs["codec_b"], "model_config.json")) as f:
        record = json.load(f)
    assert record["family"] == "codec" and record["inference_path"] == "generator"
    assert record["task"] == "mufm.codec.task.CodecTask"
    codec = record["configs"]["codec"]
    assert codec["__class__"] == "mufm.codec.model.CodecConfig"
    assert (codec["channels"], codec["codebook_size"]) == (6, 32)


def test_models_loaded_side_by_side_match_each_loaded_alone(three_runs, tmp_path):
    names = list(three_runs)
    alone = {}
    for name in names:
        _python(ALONE, three_runs[name], str(tmp_path / f"{name}.npy"))
        alone[name] = np.load(tmp_path / f"{name}.npy")
    _python(TOGETHER, str(tmp_path / "together.npz"), *[three_runs[n] for n in names])
    saved = np.load(tmp_path / "together.npz")
    together = {name: saved[f"arr_{i}"] for i, name in enumerate(names)}
    assert alone["codec_a"].shape == alone["codec_b"].shape == (1, 4800)
    assert not np.array_equal(alone["codec_a"], alone["codec_b"])  # two different codecs
    for name in names:
        np.testing.assert_array_equal(together[name], alone[name], err_msg=name)


def test_loader_names_what_is_wrong(three_runs, tmp_path):
    from mufm.codec.restore import load_codec
    from mufm.train.restore import CheckpointNotFoundError, WrongFamilyError, load

    with pytest.raises(WrongFamilyError, match="'lm' run"):
        load(three_runs["lm"], family="codec")
    with pytest.raises(CheckpointNotFoundError, match="'lm' run"):
        load_codec(three_runs["lm"])
    with pytest.raises(CheckpointNotFoundError, match="not a training run"):
        load(str(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint for step 7"):
        load(three_runs["lm"], step=7)
    step_dir = os.path.join(three_runs["lm"], "checkpoints", "2")
    assert load(step_dir).step == 2
