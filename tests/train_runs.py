"""Runs `python -m mufm.train` in a subprocess and reads what it wrote, for end-to-end tests."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small and quick, still the real synthetic task, packing and all.
FAST = ("--gin.DataConfig.sequence_length=64", "--gin.DataConfig.batch_size=8",
        "--gin.RunConfig.eval_every=0")


def train_cmd(model_dir: str, *bindings: str, gin_file: str = "experiments/synthetic_tiny.gin") -> list[str]:
    return [sys.executable, "-m", "mufm.train", f"--gin_file={gin_file}",
            f'--gin.MODEL_DIR="{model_dir}"', *FAST, *bindings]


def train_env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run_train(model_dir: str, *bindings: str, devices: int = 1, timeout: float = 600,
              gin_file: str = "experiments/synthetic_tiny.gin") -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(model_dir, *bindings, gin_file=gin_file), cwd=REPO,
                          env=train_env(devices), capture_output=True, text=True, timeout=timeout)
    return proc


def scalars(model_dir: str, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing import event_accumulator

    out: dict[int, float] = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "events.out.tfevents.*"))):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        if tag in acc.Tags().get("tensors", []):
            import tensorflow as tf
            for e in acc.Tensors(tag):
                out[e.step] = float(tf.make_ndarray(e.tensor_proto))
    return out


def tiny_corpus(out: str, works: int = 6) -> str:
    """A `quick` corpus of `works` rendered works (2 variants each) at `out`; skips the test
    where fluidsynth or its General MIDI soundfont is missing."""
    import shutil

    import pytest

    if shutil.which("fluidsynth") is None or not os.path.exists("/usr/share/sounds/sf2/FluidR3_GM.sf2"):
        pytest.skip("fluidsynth + fluid-soundfont-gm not installed (launch/install.sh installs them)")
    subprocess.run([sys.executable, "-m", "mufm.data.corpus", "build", f"--out={out}",
                    "--config=quick", f"--limit={works}", "--variants=2", "--jobs=2",
                    "--no-progress"], cwd=REPO, check=True, capture_output=True, text=True)
    return out


def checkpoint_steps(model_dir: str) -> list[int]:
    d = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def path_name(path) -> str:
    """'blocks/0/mlp/wi/kernel' whether list indices come back as ints or strings."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def restored_params(model_dir: str, step: int) -> dict[str, np.ndarray]:
    """Flattened {path: array} of the parameters saved at `step` (no target needed)."""
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(model_dir, "checkpoints", str(step), "state")
    tree = ocp.StandardCheckpointer().restore(path)
    return {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree["params"])}
