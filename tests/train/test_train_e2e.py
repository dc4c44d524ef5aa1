"""End to end through `python -m mufm.train`: learning, resume after SIGKILL, 8 vs 1 device,
restore across meshes, non-finite stop. Each run is a real subprocess on the synthetic task."""
import glob
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from tests.train_runs import (REPO, checkpoint_steps, path_name, restored_params, run_train, scalars,
                              train_cmd, train_env)

pytestmark = pytest.mark.slow


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_synthetic_tiny_learns(tmp_path):
    d = str(tmp_path / "tiny")
    _ok(run_train(d, "--gin.DataConfig.sequence_length=128", "--gin.DataConfig.batch_size=16",
                  "--gin.RunConfig.log_every=25"))
    loss = scalars(d, "loss")
    copy_acc = scalars(d, "accuracy/copy")
    first, last = loss[min(loss)], loss[max(loss)]
    assert last < 0.2 * first, loss
    assert copy_acc[max(copy_acc)] > 0.9, copy_acc
    with open(os.path.join(d, "config.gin")) as f:
        operative = f.read()
    assert "LMConfig.d_model = 128" in operative and "TRAIN_STEPS = 300" in operative


RESUME = ("--gin.TRAIN_STEPS=60", "--gin.CheckpointConfig.save_every=10",
          "--gin.RunConfig.log_every=10")


def test_sigkill_then_restart_ends_bitwise_equal(tmp_path):
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    _ok(run_train(ref, *RESUME))

    proc = subprocess.Popen(train_cmd(killed, *RESUME), cwd=REPO, env=train_env(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not [s for s in checkpoint_steps(killed) if s >= 20]:
        assert proc.poll() is None, "run finished before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoint_steps(killed)
    assert saved and max(saved) < 60, saved

    _ok(run_train(killed, *RESUME))  # the same command again
    assert max(checkpoint_steps(killed)) == 60
    a, b = restored_params(ref, 60), restored_params(killed, 60)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The resumed run logged the same losses as the reference after the restart point.
    la, lb = scalars(ref, "loss"), scalars(killed, "loss")
    assert la[60] == lb[60]


TRAJ = ("--gin.TRAIN_STEPS=20", "--gin.RunConfig.log_every=1", "--gin.CheckpointConfig.save_every=20",
        "--gin.DataConfig.batch_size=8")


@pytest.fixture(scope="module")
def two_meshes(tmp_path_factory):
    root = tmp_path_factory.mktemp("meshes")
    one, eight = str(root / "one"), str(root / "eight")
    _ok(run_train(one, *TRAJ, devices=1))
    _ok(run_train(eight, *TRAJ, "--gin_file=mesh/cpu8.gin", devices=8))
    return one, eight


def _trajectory_rtol() -> float:
    """Each logged loss of the 8-device run sums the same terms as the 1-device one in
    other orders: each sequence's forward through matmuls of other shapes
    (rounding_tolerance of the tiny model at length 128), then the n = batch x length
    non-negative token losses (2 n u of their total). Earlier updates that differ do not
    add to first order: Adam steps lr * sign(g) alike wherever g stands clear of its
    rounding, and where it does not (a flip, 2 lr apart) the loss is flat in that weight."""
    import gin

    from mufm import gin_flags
    from mufm.lm.model import LMConfig
    from tests.lm.rounding import U, rounding_tolerance

    gin_flags.parse(["models/tiny.gin"], [], finalize=False)
    try:
        cfg = LMConfig()
    finally:
        gin.clear_config()
    length, batch = 128, 8  # experiments/synthetic_tiny.gin's crops, TRAJ's batch
    return rounding_tolerance(cfg, length) + 2 * batch * length * U


def test_8_device_mesh_matches_1_device_trajectory(two_meshes):
    one, eight = two_meshes
    l1, l8 = scalars(one, "loss"), scalars(eight, "loss")
    assert sorted(l1) == sorted(l8) == list(range(1, 21))
    np.testing.assert_allclose([l8[s] for s in l8], [l1[s] for s in l1], rtol=_trajectory_rtol())
    assert l1[20] < l1[1]


def _restore_on(model_dir, ici):
    from mufm import gin_flags
    from mufm.lm.model import LMConfig
    from mufm.parallel.logical import sharding_context
    from mufm.parallel.mesh import MeshConfig, build_mesh
    from mufm.train.checkpoint import CheckpointConfig, Checkpointer
    from mufm.lm.model import StageLM
    from mufm.train.optim import OptimizerConfig, make_optimizer
    from mufm.train.state import abstract_state

    gin_flags.parse(["experiments/synthetic_tiny.gin"], [f'MODEL_DIR="{model_dir}"'], finalize=False)
    import gin
    model, opt, rules = LMConfig(), OptimizerConfig(), MeshConfig().rules
    gin.clear_config()
    n = int(np.prod(ici))
    mesh = build_mesh(MeshConfig(ici_parallelism=ici, logical_axis_rules=rules), jax.devices()[:n])
    tx, _ = make_optimizer(opt, 20)
    with sharding_context(mesh, rules):
        abstract, _, _ = abstract_state(lambda r: StageLM(model, rngs=r), tx, mesh, rules)
        ckpt = Checkpointer(model_dir, CheckpointConfig())
        state, data = ckpt.restore(20, abstract)
        ckpt.close()
    return state, data


@pytest.mark.parametrize("source,ici", [("eight", (1, 1, 1)), ("one", (2, 2, 2))])
def test_checkpoint_restores_on_another_mesh(two_meshes, source, ici):
    one, eight = two_meshes
    model_dir = eight if source == "eight" else one
    state, data = _restore_on(model_dir, ici)
    assert data["batches"] == 20 and int(state.step) == 20
    biggest = max(jax.tree.leaves(state.params), key=lambda a: a.size)
    assert len(biggest.sharding.device_set) == int(np.prod(ici))
    saved = restored_params(model_dir, 20)
    got = {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
    assert saved.keys() == got.keys()
    for k in saved:
        np.testing.assert_array_equal(saved[k], got[k], err_msg=k)


def test_nonfinite_streak_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    d = str(tmp_path / "nan")
    proc = run_train(d, "--gin.TRAIN_STEPS=30", "--gin.OptimizerConfig.learning_rate=1e30",
                     "--gin.OptimizerConfig.clip_norm=None", "--gin.OptimizerConfig.warmup_steps=0",
                     "--gin.RunConfig.max_nonfinite_streak=3", "--gin.CheckpointConfig.save_every=1")
    assert proc.returncode != 0
    assert "consecutive steps" in proc.stderr and "non-finite" in proc.stderr
    steps = checkpoint_steps(d)
    assert steps and max(steps) < 30
    params = restored_params(d, max(steps))
    assert params  # the newest checkpoint is complete and readable


def test_profile_steps_write_a_trace(tmp_path):
    d = str(tmp_path / "prof")
    _ok(run_train(d, "--gin.TRAIN_STEPS=6", "--gin.RunConfig.profile_steps=(3, 4)",
                  "--gin.CheckpointConfig.save_every=6"))
    traces = glob.glob(os.path.join(d, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0, traces
