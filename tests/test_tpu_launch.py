"""The TPU launcher's --dry_run prints the exact gcloud commands (documented in the README's
"Running on TPU VMs"): a v5e-256 single slice and a 2 x v5e-256 multislice."""
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "tpu", "launch.py")
COMMON = ("--name=mufm", "--zone=us-west4-a", "--accelerator=v5litepod-256",
          "--runtime=v2-alpha-tpuv5-lite", "--dry_run")
TRAIN = ("--gin_file=experiments/musiclm_stage_v5e_256.gin", '--gin.MODEL_DIR="gs://bucket/runs/stage"')


def dry(command, *extra, train=()):
    argv = [sys.executable, LAUNCH, command, *COMMON, *extra] + (["--", *train] if train else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.strip().splitlines()]


def test_single_slice_create_train_stop():
    assert dry("create") == [["gcloud", "compute", "tpus", "tpu-vm", "create", "mufm",
                              "--zone=us-west4-a", "--accelerator-type=v5litepod-256",
                              "--version=v2-alpha-tpuv5-lite"]]
    (train,) = dry("train", train=TRAIN)
    assert train[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mufm", "--zone=us-west4-a"]
    assert "--worker=all" in train
    remote = train[-1].split("=", 1)[1]
    assert shlex.split(remote)[:6] == ["cd", "~/mufm", "&&", ".venv/bin/python", "-m", "mufm.train"]
    assert '--gin.MODEL_DIR="gs://bucket/runs/stage"' in shlex.split(remote)
    assert "MEGASCALE" not in remote
    assert dry("stop") == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "mufm",
                            "--zone=us-west4-a", "--quiet"]]


def test_single_slice_logs_one_per_worker():
    logs = dry("logs")
    assert logs[0] == ["mkdir", "-p", "runs/tpu_logs"]
    assert len(logs) == 1 + 64  # a v5e-256 slice is 64 hosts of 4 chips
    assert logs[64][-1] == "--worker=63" and logs[64][-3].endswith("mufm-w63.log")


def test_multislice_queued_resource_and_megascale_env():
    (create,) = dry("create", "--num_slices=2")
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "mufm"]
    assert "--node-count=2" in create and "--node-prefix=mufm" in create
    lines = dry("train", "--num_slices=2", train=TRAIN)
    assert lines[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "mufm-0"]
    slices = lines[1:]
    assert [s[5] for s in slices] == ["mufm-0", "mufm-1"]
    for slice_id, cmd in enumerate(slices):
        remote = cmd[-1]
        assert "MEGASCALE_COORDINATOR_ADDRESS=COORDINATOR_IP:8080" in remote
        assert f"MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={slice_id}" in remote
    setup = dry("setup", "--num_slices=2")
    assert setup[0][:2] == ["git", "-C"] and len(setup) == 1 + 2 * 2
    assert dry("stop", "--num_slices=2")[0][3:6] == ["queued-resources", "delete", "mufm"]


def test_train_without_flags_is_refused():
    proc = subprocess.run([sys.executable, LAUNCH, "train", *COMMON], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "train needs the training flags" in proc.stderr
