"""The multi-host rehearsal: `launch/local_multiprocess.sh 2` runs two real processes (4
fake CPU devices each, jax.distributed on localhost, gloo collectives) on one 2x2x2 global
mesh, each reading its own seqio input shard. Killed (every process, SIGKILL) and
restarted, the run ends bitwise equal to an uninterrupted 2-process run; it follows a
1-process run on the same 8-device mesh reading the same two input shards within the
rounding of its all-reduces (gloo sums the shards in another order than XLA's in-process
collectives, so bitwise equality across the two is not on offer); and a process that dies
takes the others down within the launcher's grace period, naming it."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train.test_train_e2e import _trajectory_rtol
from tests.train_runs import REPO, checkpoint_steps, run_train, scalars

pytestmark = pytest.mark.slow

ARGS = ("--gin_file=experiments/synthetic_tiny.gin", "--gin_file=mesh/cpu8.gin",
        "--gin.TRAIN_STEPS=20", "--gin.DataConfig.sequence_length=64",
        "--gin.DataConfig.batch_size=8", "--gin.DataConfig.input_shards=2",
        "--gin.RunConfig.eval_every=0", "--gin.RunConfig.log_every=1",
        "--gin.CheckpointConfig.save_every=5")
LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.sh")


def _launch(model_dir, *extra, grace_s=60):
    env = dict(os.environ, PYTHON=sys.executable, LOG_DIR=os.path.join(model_dir + "_logs"),
               GRACE_S=str(grace_s))
    return subprocess.Popen(["bash", LAUNCHER, "2", *ARGS, f'--gin.MODEL_DIR="{model_dir}"', *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _params(model_dir, step=20):
    from flax import nnx

    from mufm.train.restore import load

    flat = nnx.to_pure_dict(load(model_dir, step=step).params)
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(flat)]


def _wait_for_checkpoint(model_dir, proc, at_least, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if [s for s in checkpoint_steps(model_dir) if s >= at_least]:
            return
        assert proc.poll() is None, "run finished before it could be killed"
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint >= {at_least} in {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("mp") / "ref")
    rc, out, err = _finish(_launch(d))
    assert rc == 0, out + err
    return d


def test_killed_and_restarted_ends_bitwise_equal(reference, tmp_path):
    d = str(tmp_path / "killed")
    proc = _launch(d)
    _wait_for_checkpoint(d, proc, 10)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
    proc.wait()
    saved = checkpoint_steps(d)
    assert saved and max(saved) < 20, saved
    rc, out, err = _finish(_launch(d))  # the same command again
    assert rc == 0, out + err
    assert max(checkpoint_steps(d)) == 20
    for a, b in zip(_params(reference), _params(d)):
        np.testing.assert_array_equal(a, b)


def test_two_processes_follow_one_process_on_the_same_mesh(reference, tmp_path):
    one = str(tmp_path / "one")
    proc = run_train(one, *ARGS[2:], "--gin_file=mesh/cpu8.gin", devices=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l1, l2 = scalars(one, "loss"), scalars(reference, "loss")
    assert sorted(l1) == sorted(l2) == list(range(1, 21))
    np.testing.assert_allclose([l2[s] for s in l2], [l1[s] for s in l1], rtol=_trajectory_rtol())
    assert l2[20] < l2[1]


def test_a_dead_process_takes_the_others_down_in_bounded_time(tmp_path):
    d = str(tmp_path / "dies")
    proc = _launch(d, "--gin.TRAIN_STEPS=100000", grace_s=10)
    first = proc.stdout.readline()
    pids = [int(p) for p in re.search(r"pids ([\d ]+),", first).group(1).split()]
    _wait_for_checkpoint(d, proc, 5)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    rc, out, err = _finish(proc, timeout=300)
    assert rc != 0 and "process 1 exited" in err, err
    assert time.time() - t0 < 10 + 120  # the grace period, then the survivors are killed
    for pid in pids:  # nobody is left behind (gone, or at most a zombie awaiting init)
        status = f"/proc/{pid}/status"
        if os.path.exists(status):
            with open(status) as f:
                assert re.search(r"^State:\s+Z", f.read(), re.M), f"process {pid} still runs"
