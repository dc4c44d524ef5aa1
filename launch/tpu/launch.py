"""Cloud TPU launcher for mufm runs: create a TPU VM (or a multislice queued resource),
install the code on every worker, run one `python -m mufm.train` command on all workers at
once, gather one log per worker, and tear it down. Every command takes `--dry_run`, which
prints the exact gcloud commands instead of running them.

    python launch/tpu/launch.py create --name=mufm --zone=us-west4-a \
        --accelerator=v5litepod-256 --runtime=v2-alpha-tpuv5-lite [--num_slices=2]
    python launch/tpu/launch.py setup  --name=mufm --zone=us-west4-a [--num_slices=2]
    python launch/tpu/launch.py train  --name=mufm --zone=us-west4-a [--num_slices=2] -- \
        --gin_file=experiments/musiclm_stage_v5e_256.gin --gin.MODEL_DIR=\\"gs://BUCKET/runs/stage\\"
    python launch/tpu/launch.py logs   --name=mufm --zone=us-west4-a --accelerator=v5litepod-256
    python launch/tpu/launch.py stop   --name=mufm --zone=us-west4-a [--num_slices=2]

One slice is a plain TPU VM (`gcloud compute tpus tpu-vm create`); several slices are one
queued resource whose nodes are NAME-0, NAME-1, ... (`gcloud compute tpus queued-resources
create --node-count`), joined over DCN: each worker gets the MEGASCALE_* variables that
jax reads to form one multislice mesh (MeshConfig.dcn_parallelism then splits data across
slices, as in configs/mesh/multislice_v5e.gin). Python-only, so it needs nothing but gcloud.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO_DIR = "~/mufm"  # where the code lives on every worker
TARBALL = "/tmp/mufm_code.tar.gz"
LOG = "~/mufm_train.log"


def chips(accelerator: str) -> int:
    """Chips of an accelerator type such as v5litepod-256 or v5p-128 (the number after -)."""
    try:
        return int(accelerator.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise SystemExit(f"--accelerator={accelerator!r}: expected a type like v5litepod-256") from None


def workers_per_slice(accelerator: str) -> int:
    """TPU VM hosts of one slice: v5e hosts hold 4 chips (up to 8 on one host); v4/v5p
    count TensorCores in the type name (2 per chip, 4 chips per host)."""
    n = chips(accelerator)
    if accelerator.startswith("v5litepod") or accelerator.startswith("v6e"):
        return 1 if n <= 8 else n // 4
    return max(1, n // 8)


def nodes(args) -> list[str]:
    return [args.name] if args.num_slices == 1 else [f"{args.name}-{i}" for i in range(args.num_slices)]


def gcloud(*parts: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *parts]


def create_commands(args) -> list[list[str]]:
    if args.num_slices == 1:
        return [gcloud("tpu-vm", "create", args.name, f"--zone={args.zone}",
                       f"--accelerator-type={args.accelerator}", f"--version={args.runtime}")]
    return [gcloud("queued-resources", "create", args.name, f"--node-prefix={args.name}",
                   f"--node-count={args.num_slices}", f"--zone={args.zone}",
                   f"--accelerator-type={args.accelerator}", f"--runtime-version={args.runtime}")]


def setup_commands(args) -> list[list[str]]:
    """Pack the checkout (tracked files), copy it to every worker, install there."""
    out = [["git", "-C", args.repo, "archive", "--format=tar.gz", f"--output={TARBALL}", "HEAD"]]
    install = (f"mkdir -p {REPO_DIR} && tar xzf {os.path.basename(TARBALL)} -C {REPO_DIR} && "
               f"bash {REPO_DIR}/launch/install.sh")
    for node in nodes(args):
        out.append(gcloud("tpu-vm", "scp", TARBALL, f"{node}:{os.path.basename(TARBALL)}",
                          f"--zone={args.zone}", "--worker=all"))
        out.append(gcloud("tpu-vm", "ssh", node, f"--zone={args.zone}", "--worker=all",
                          f"--command={install}"))
    return out


def coordinator_command(args) -> list[str]:
    """Prints the internal IP of slice 0's worker 0 (the multislice coordinator)."""
    return gcloud("tpu-vm", "describe", f"{args.name}-0", f"--zone={args.zone}",
                  "--format=value(networkEndpoints[0].ipAddress)")


def train_commands(args, train_args: list[str], coordinator: str = "COORDINATOR_IP"
                   ) -> list[list[str]]:
    """The same training command on every worker of every slice (run all at once)."""
    train = " ".join(shlex.quote(a) for a in train_args)
    out = []
    for slice_id, node in enumerate(nodes(args)):
        env = ""
        if args.num_slices > 1:
            # jax joins the slices over DCN from these (slice 0's worker 0 coordinates).
            env = (f"MEGASCALE_COORDINATOR_ADDRESS={coordinator}:8080 "
                   f"MEGASCALE_NUM_SLICES={args.num_slices} MEGASCALE_SLICE_ID={slice_id} ")
        command = (f"cd {REPO_DIR} && {env}.venv/bin/python -m mufm.train {train} "
                   f"2>&1 | tee {LOG}")
        out.append(gcloud("tpu-vm", "ssh", node, f"--zone={args.zone}", "--worker=all",
                          f"--command={command}"))
    return out


def logs_commands(args) -> list[list[str]]:
    """One log per worker, gathered into --log_dir as <node>-w<i>.log."""
    out = [["mkdir", "-p", args.log_dir]]
    for node in nodes(args):
        for w in range(args.workers or workers_per_slice(args.accelerator)):
            out.append(gcloud("tpu-vm", "scp", f"{node}:{LOG}",
                              os.path.join(args.log_dir, f"{node}-w{w}.log"),
                              f"--zone={args.zone}", f"--worker={w}"))
    return out


def stop_commands(args) -> list[list[str]]:
    if args.num_slices == 1:
        return [gcloud("tpu-vm", "delete", args.name, f"--zone={args.zone}", "--quiet")]
    return [gcloud("queued-resources", "delete", args.name, f"--zone={args.zone}", "--force",
                   "--quiet")]


COMMANDS = {"create": create_commands, "setup": setup_commands, "train": train_commands,
            "logs": logs_commands, "stop": stop_commands}


def parse(argv: list[str]):
    train_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="launch/tpu/launch.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--name", required=True, help="TPU VM (or queued resource) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--accelerator", default="v5litepod-256", help="accelerator type")
    p.add_argument("--runtime", default="v2-alpha-tpuv5-lite", help="TPU VM runtime version")
    p.add_argument("--num_slices", type=int, default=1, help=">1: a multislice queued resource")
    p.add_argument("--workers", type=int, default=0, help="hosts per slice (default: from --accelerator)")
    p.add_argument("--log_dir", default="runs/tpu_logs")
    p.add_argument("--coordinator", default="", help="multislice: slice 0 worker 0's address "
                   "(default: looked up with gcloud ... describe)")
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if args.num_slices < 1:
        p.error("--num_slices must be >= 1")
    if args.command == "train" and not train_args:
        p.error("train needs the training flags after --, e.g. -- --gin_file=experiments/x.gin "
                "--gin.MODEL_DIR=\\\"gs://bucket/run\\\"")
    return args, train_args


def _train(args, train_args) -> int:
    """Resolves the multislice coordinator, then starts every slice's ssh at once (each
    blocks until its workers finish) and waits for all."""
    coordinator = args.coordinator
    if args.num_slices > 1 and not coordinator:
        cmd = coordinator_command(args)
        print(shlex.join(cmd), flush=True)
        coordinator = "COORDINATOR_IP" if args.dry_run else subprocess.check_output(cmd, text=True).strip()
    commands = train_commands(args, train_args, coordinator or "COORDINATOR_IP")
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    procs = [subprocess.Popen(cmd) for cmd in commands]
    codes = [p.wait() for p in procs]
    for node, rc in zip(nodes(args), codes):
        if rc:
            print(f"launch/tpu/launch.py: training on {node} exited with {rc}", file=sys.stderr)
    return next((rc for rc in codes if rc), 0)


def main(argv=None) -> int:
    args, train_args = parse(list(sys.argv[1:] if argv is None else argv))
    if args.command == "train":
        return _train(args, train_args)
    for cmd in COMMANDS[args.command](args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc:
                print(f"launch/tpu/launch.py: {cmd[0]} exited with {rc}", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
