"""The multi-host rehearsal: `launch/local_multiprocess.sh 2` runs two real processes (4
fake CPU devices each, jax.distributed on localhost, gloo collectives) on one 2x2x2 global
mesh, each reading its own seqio input shard. Killed (every process, SIGKILL) and
restarted, the run ends bitwise equal to an uninterrupted 2-process run; it follows a
1-process run on the same 8-device mesh reading the same two input shards within the
rounding of its all-reduces (gloo sums the shards in another order than XLA's in-process
collectives, so bitwise equality across the two is not on offer); and a process that dies
takes the others down within the launcher's grace period, naming it. A tiny MuLan's
retrieval eval over both hosts' clips scores what one process does.

A short codec run (its reconstruction warm-up steps) evaluates on a split whose two input
shards hold 3 and 2 eval batches: the hosts agree on the batch count (mufm.parallel.
multihost.aligned_batches), so neither waits on a collective the other never reaches, and
every clip is scored; it follows the 1-process run (its first step to fp32 rounding). The
GAN step is left out here: it is the same SPMD program kind on the same mesh
(tests/codec/test_step.py holds its 8-device step to the 1-device one), and compiling it
for two processes and for one cost ~3 of this file's minutes. Without the
launcher, a dead host's missing heartbeats end the survivors with an error."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train.test_train_e2e import _trajectory_rtol
from tests.train_runs import REPO, checkpoint_steps, run_train, scalars, tiny_corpus, train_env

pytestmark = pytest.mark.slow

ARGS = ("--gin_file=experiments/synthetic_tiny.gin", "--gin_file=mesh/cpu8.gin",
        "--gin.TRAIN_STEPS=20", "--gin.DataConfig.sequence_length=64",
        "--gin.DataConfig.batch_size=8", "--gin.DataConfig.input_shards=2",
        "--gin.RunConfig.eval_every=0", "--gin.RunConfig.log_every=1",
        "--gin.CheckpointConfig.save_every=5")
LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.sh")


def _launch(model_dir, *extra, grace_s=60, args=ARGS, env=None):
    env = dict(os.environ, PYTHON=sys.executable, LOG_DIR=os.path.join(model_dir + "_logs"),
               GRACE_S=str(grace_s), **(env or {}))
    return subprocess.Popen(["bash", LAUNCHER, "2", *args, f'--gin.MODEL_DIR="{model_dir}"', *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(proc, timeout=900):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every training process
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end within {timeout} s (a hang?):\n{out}\n{err}")
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



def test_a_dead_host_stops_the_others_without_the_launcher(tmp_path):
    """On a pod nobody kills the survivors (every worker runs its own `python -m mufm.train`):
    they must end on their own, with an error. Here the next collective with the dead peer
    fails at once (gloo: connection reset) and jax's coordination service names the dead
    task (heartbeat timeout); where a collective waits instead, the heartbeat timeout
    (MUFM_HEARTBEAT_TIMEOUT_S) ends it."""
    d = str(tmp_path / "dies")
    proc = _launch(d, "--gin.TRAIN_STEPS=100000", grace_s=600,
                   env={"MUFM_HEARTBEAT_TIMEOUT_S": "10"})
    pids = [int(p) for p in re.search(r"pids ([\d ]+),", proc.stdout.readline()).group(1).split()]
    _wait_for_checkpoint(d, proc, 5)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    rc, out, err = _finish(proc, timeout=300)
    elapsed = time.time() - t0
    assert rc != 0 and "process 1 exited" in err, err
    assert "killed" not in err, err  # the survivor ended by itself, not by the launcher
    assert elapsed < 10 + 60, elapsed  # the heartbeat timeout, then the abort
    with open(os.path.join(d + "_logs", "process_0.log")) as f:
        log = f.read()
    print(f"survivor ended {elapsed:.0f} s after the kill; its log ends:\n{log[-1500:]}")
    assert re.search(r"task[:/ ]*1|heartbeat|peer|Connection", log, re.I), log[-3000:]

# The tiny codec: 4 warm-up steps (no discriminator), evaluated at the end (one eval
# program) on all of `validation_odd`: 9 clips, input shard 0 holding 3 eval batches and
# shard 1 holding 2.
CODEC_STEPS = 4
CODEC_ARGS = ("--gin_file=experiments/codec_synthetic_tiny.gin", "--gin_file=mesh/cpu8.gin",
              f"--gin.TRAIN_STEPS={CODEC_STEPS}", "--gin.GANConfig.discriminator_start=1000",
              "--gin.GANConfig.eval_levels=(4,)", "--gin.DataConfig.input_shards=2",
              "--gin.DataConfig.eval_split='validation_odd'",
              f"--gin.RunConfig.eval_every={CODEC_STEPS}", "--gin.RunConfig.eval_batches=10",
              "--gin.RunConfig.log_every=1", f"--gin.CheckpointConfig.save_every={CODEC_STEPS}")


def test_codec_with_uneven_eval_shards_two_processes_follow_one(tmp_path):
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    t0 = time.time()
    # Without agreement on the eval batch count, process 0 would run its third eval batch's
    # collectives while process 1 has gone on to checkpointing: the timeout turns that hang
    # into a failure.
    rc, out, err = _finish(_launch(two, args=CODEC_ARGS), timeout=420)
    assert rc == 0, out + err
    two_s = time.time() - t0
    proc = subprocess.run([sys.executable, "-m", "mufm.train", *CODEC_ARGS,
                           f'--gin.MODEL_DIR="{one}"'], cwd=REPO, env=train_env(8),
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"codec: 2 processes {two_s:.0f} s, 1 process {time.time() - t0 - two_s:.0f} s")
    assert checkpoint_steps(two)[-1] == checkpoint_steps(one)[-1] == CODEC_STEPS
    # The same initial state and batches: the first step agrees to fp32 rounding. Later
    # steps drift apart more (gloo's all-reduce order differs from XLA's in-process one, and
    # the codebook's dead-code restarts are discrete decisions that amplify it), so they
    # are held to 1 %.
    for name in ("mel",):
        l1, l2 = scalars(one, name), scalars(two, name)
        assert sorted(l1) == sorted(l2) == list(range(1, CODEC_STEPS + 1)), (name, l1, l2)
        np.testing.assert_allclose(l2[1], l1[1], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose([l2[s] for s in sorted(l2)], [l1[s] for s in sorted(l1)],
                                   rtol=1e-2, err_msg=name)
    # Every clip of both shards scored, by both runs: 9 clips (the pass did not stop at the
    # shorter shard, and the longer one's last batch was not dropped).
    assert scalars(two, "eval/clips") == scalars(one, "eval/clips") == {CODEC_STEPS: 9.0}
    for tag in ("eval/si_snr_db/", "eval/mel_distance/"):
        names = [t for t in _tags(two) if t.startswith(tag)]
        assert names, _tags(two)
        for t in names:
            e1, e2 = scalars(one, t), scalars(two, t)
            assert sorted(e1) == sorted(e2) == [CODEC_STEPS], (t, e1, e2)
            np.testing.assert_allclose(e2[CODEC_STEPS], e1[CODEC_STEPS], rtol=0.05, atol=0.05,
                                       err_msg=t)


# The tiny MuLan on a rendered corpus whose validation split holds 2 clips, one per input
# shard: its retrieval eval scores each clip's audio against every caption of both hosts.
MULAN_ARGS = ("--gin_file=experiments/mulan_corpus_tiny.gin", "--gin_file=mesh/cpu8.gin",
              "--gin.TRAIN_STEPS=4", "--gin.DataConfig.batch_size=8",
              "--gin.DataConfig.input_shards=2", "--gin.RunConfig.eval_every=4",
              "--gin.RunConfig.log_every=1", "--gin.CheckpointConfig.save_every=4")


def test_mulan_retrieval_eval_spans_both_processes(tmp_path):
    corpus = tiny_corpus(str(tmp_path / "corpus"))
    # One TFDS directory, unprepared, for both processes: they start together, so both may
    # generate the dataset, and then the second one's rename into place fails; it must read
    # the first one's copy (it failed the run before mufm.data.tasks caught that).
    tfds_env = {"MUFM_TFDS_DIR": str(tmp_path / "tfds")}
    args = (*MULAN_ARGS, f'--gin.CORPUS_DIR="{corpus}"')
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    rc, out, err = _finish(_launch(two, args=args, env=tfds_env), timeout=420)
    assert rc == 0, out + err
    proc = subprocess.run([sys.executable, "-m", "mufm.train", *args, f'--gin.MODEL_DIR="{one}"'],
                          cwd=REPO, env=dict(train_env(8), **tfds_env), capture_output=True,
                          text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both clips are candidates (the hosts' embeddings gathered), and the scores follow the
    # 1-process run: the same clips, its 4 steps within the drift of gloo's all-reduce
    # order (as the codec's above, 1 %).
    assert scalars(two, "eval/candidates") == scalars(one, "eval/candidates") == {4: 2.0}
    for tag in ("eval/loss", "eval/audio_to_text_r1", "eval/text_to_audio_r1"):
        e1, e2 = scalars(one, tag), scalars(two, tag)
        assert sorted(e1) == sorted(e2) == [4], (tag, e1, e2)
        np.testing.assert_allclose(e2[4], e1[4], rtol=1e-2, err_msg=tag)


def _tags(model_dir):
    from tensorboard.backend.event_processing import event_accumulator
    import glob

    tags = set()
    for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        tags.update(acc.Tags().get("tensors", []))
    return sorted(tags)
