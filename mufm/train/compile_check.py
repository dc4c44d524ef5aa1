"""Ahead-of-time compile of every program a task trains with, for a TPU topology, on a
machine with no TPU (MaxText keeps `train_compile.py` beside `train.py`; so does mufm).

    python -m mufm.train.compile_check --gin_file=experiments/musiclm_stage_v5e_256.gin \
        --topology=v5e:16x16 [--num_slices=2] [--programs=train,eval] [--gin.NAME=value ...]

libtpu's compiler is asked for compile-only devices of the named topology
(`jax.experimental.topologies`); the trainer's own program (`mufm.train.loop.build_program`
of the configured `train.task`: mesh, sharded abstract state, every jitted train step and
eval program the task declares) is lowered on them with a batch of shapes and compiled.
Nothing runs and no data is read; nothing here knows which model it is. It prints, per
program, XLA's per-chip memory (arguments, outputs, temporaries, code) and FLOPs (next to
the task's analytic FLOPs for train steps) and the chip's HBM, and ends with one line over
all programs (the largest per-chip footprint)

    fits=<true|false> per_chip_bytes=<int> hbm_bytes=<int>

Exit status: 0 fits, 1 does not fit, 2 bad configuration or topology.
"""
from __future__ import annotations

import os

# libtpu reads these when it loads (on the first jax import), so they are set before any
# import of jax. On a machine that is not a TPU VM libtpu otherwise asks the GCE metadata
# server for the accelerator type and worker hostnames and logs errors; the values only
# describe "this host", the compile target comes from --topology. Set only when this
# module is the program, so importing it inside a real pod job changes nothing.
COMPILE_ONLY_ENV = {
    "TPU_ACCELERATOR_TYPE": "v5litepod-8",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_SKIP_MDS_QUERY": "1",
    # libtpu takes /tmp/libtpu_lockfile to own the chips; with no chips to own, let several
    # compile checks (tests, colleagues) run side by side.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}
if __name__ == "__main__":
    for _k, _v in COMPILE_ONLY_ENV.items():
        os.environ.setdefault(_k, _v)
    # The topology devices are compile-only and need no TPU runtime; the host backend is
    # the CPU (left unset, jax would try to bring up a TPU runtime and fail without chips).
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import re
import sys
import time
from typing import Sequence

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    device_kind: str  # what jax reports, to check libtpu gave us the chip we asked for
    hbm_bytes: int  # per JAX device (a chip, or a core where cores are separate devices)
    chip_config: str | None = None  # libtpu chip config: v4 runs megacore (1 device/chip)


# HBM per JAX device, from Cloud TPU system-architecture pages. v2/v3 expose each of the two
# cores of a chip as a device with half the chip's HBM; v4 is run megacore like on a real VM.
TPU_GENERATIONS = {
    "v2": TpuGeneration("TPU v2", 8 * GiB),
    "v3": TpuGeneration("TPU v3", 16 * GiB),
    "v4": TpuGeneration("TPU v4", 32 * GiB, chip_config="megacore"),
    "v5e": TpuGeneration("TPU v5 lite", 16 * GiB),
    "v5p": TpuGeneration("TPU v5", 95 * GiB),
    "v6e": TpuGeneration("TPU v6 lite", 32 * GiB),
}

_TOPOLOGY_RE = re.compile(r"^(v\d+[a-z]?):(\d+(?:x\d+){1,2})$")


class TopologyError(ValueError):
    """--topology is not of the form GENERATION:AxB[xC] or libtpu rejects it."""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    m = _TOPOLOGY_RE.match(name.strip())
    if not m or m.group(1) not in TPU_GENERATIONS:
        raise TopologyError(
            f"--topology={name!r}: expected GENERATION:AxB or GENERATION:AxBxC with GENERATION "
            f"one of {sorted(TPU_GENERATIONS)}, e.g. v5e:16x16 (a v5e-256 slice), v5e:2x2, "
            f"v4:4x4x4, v5p:4x4x8")
    return m.group(1), tuple(int(x) for x in m.group(2).split("x"))


def topology_devices(name: str, num_slices: int = 1):
    """Compile-only devices of `num_slices` slices of topology `name`."""
    from jax.experimental import topologies

    gen, _ = parse_topology(name)
    kwargs = {"num_slices": num_slices}
    if TPU_GENERATIONS[gen].chip_config:
        kwargs["chip_config_name"] = TPU_GENERATIONS[gen].chip_config
    try:
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
    except Exception as e:  # JaxRuntimeError from libtpu, RuntimeError without libtpu
        raise TopologyError(
            f"--topology={name!r}: libtpu could not describe it ({type(e).__name__}: {e}). "
            f"Is libtpu installed (pip install -e .[tpu])? Expected forms: v5e:16x16, v4:4x4x4") from None
    devices = list(topo.devices)
    kind = devices[0].device_kind
    if kind != TPU_GENERATIONS[gen].device_kind:
        raise TopologyError(f"--topology={name!r}: libtpu gave {kind!r} devices, expected "
                            f"{TPU_GENERATIONS[gen].device_kind!r}")
    return devices


@dataclasses.dataclass(frozen=True)
class Report:
    program: str  # the task's step or eval program name
    topology: str
    num_devices: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int
    flops_per_device: float  # XLA's count for one device's program (0 when it did not compile)
    model_flops: float  # analytic, whole step, all devices (0: an eval program)
    compile_s: float
    oom_message: str | None = None  # the compiler's own out-of-HBM error, when it gave one

    @property
    def per_chip_bytes(self) -> int:
        # Donated state comes back in the same buffers: aliased outputs are counted once.
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def fits(self) -> bool:
        return self.oom_message is None and self.per_chip_bytes <= self.hbm_bytes

    def lines(self) -> list[str]:
        g = lambda b: f"{b:>15,d} B  {b / GiB:8.3f} GiB"
        out = [f"program {self.program!r} on {self.topology} ({self.num_devices} devices), "
               f"compiled in {self.compile_s:.0f} s"]
        if self.oom_message:
            out += [f"compiler            {self.oom_message}",
                    "                    (arguments from the shardings, temporaries from the "
                    "compiler's message)"]
        out += [
            f"arguments           {g(self.argument_bytes)}",
            f"outputs             {g(self.output_bytes)}",
            f"aliased (donated)   {g(self.alias_bytes)}",
            f"temporaries         {g(self.temp_bytes)}",
            f"generated code      {g(self.code_bytes)}",
            f"total per chip      {g(self.per_chip_bytes)}",
            f"HBM per chip        {g(self.hbm_bytes)}",
            f"headroom            {(1 - self.per_chip_bytes / self.hbm_bytes) * 100:7.1f} %",
        ]
        if self.flops_per_device:
            xla_total = self.flops_per_device * self.num_devices
            ratio = f", {xla_total / self.model_flops:.3f} x model FLOPs" if self.model_flops else ""
            out.append(f"XLA FLOPs per step  {self.flops_per_device:.4e} per chip, "
                       f"{xla_total:.4e} total{ratio}")
            out.append("                    (XLA counts the body of a scanned loop once, e.g. "
                       "one layer of a scanned stack)")
        if self.model_flops:
            out.append(f"model FLOPs/step    {self.model_flops:.4e} total, "
                       f"{self.model_flops / self.num_devices:.4e} per chip (analytic, no remat)")
        return out


def summary_line(reports: Sequence[Report]) -> str:
    worst = max(reports, key=lambda r: r.per_chip_bytes)
    fits = all(r.fits for r in reports)
    return (f"fits={str(fits).lower()} per_chip_bytes={worst.per_chip_bytes} "
            f"hbm_bytes={worst.hbm_bytes}")


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    import jax
    import numpy as np

    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# XLA TPU's out-of-HBM errors, e.g. "the total memory required for HLO temporaries (24.12G)
# exceeds available HBM (15.75G)" or "Used 20.50G of 15.75G hbm".
_OOM_RE = re.compile(r"temporaries \(([\d.]+)([KMGT]?)\)|Used ([\d.]+)([KMGT]?) of")


def _oom_temp_bytes(message: str) -> int:
    m = _OOM_RE.search(message)
    if not m:
        return 0
    value, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return int(float(value) * _UNITS[unit])


def configured_program(devices):
    """The trainer's Program for the parsed gin config's `train.task`, `train.mesh` and
    `train.run`, on `devices`: the same objects `train()` would be called with."""
    import gin

    from mufm.train.loop import build_program

    cfgs = {k: gin.query_parameter(f"train.{k}").scoped_configurable_fn()
            for k in ("task", "mesh", "run")}
    return build_program(cfgs["task"], cfgs["mesh"], cfgs["run"], devices=devices)


def compile_one(program, name: str, fn, *, topology: str, hbm_bytes: int,
                model_flops: float) -> Report:
    import jax

    from mufm.parallel.logical import sharding_context

    common = dict(program=name, topology=topology, num_devices=program.mesh.devices.size,
                  hbm_bytes=hbm_bytes, model_flops=model_flops)
    start = time.perf_counter()
    with sharding_context(program.mesh, program.rules):
        lowered = fn.lower(program.abstract, program.batch_spec)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses programs that exceed HBM, so no memory_analysis():
            # rebuild the figures from the shardings and the compiler's message.
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            state = _shard_bytes(program.abstract)
            return Report(argument_bytes=state + _shard_bytes(program.batch_spec),
                          output_bytes=state, alias_bytes=state,
                          temp_bytes=_oom_temp_bytes(str(e)), code_bytes=0, flops_per_device=0.0,
                          compile_s=time.perf_counter() - start,
                          oom_message=str(e).strip().splitlines()[0], **common)
    mem = compiled.memory_analysis()
    return Report(argument_bytes=int(mem.argument_size_in_bytes),
                  output_bytes=int(mem.output_size_in_bytes),
                  alias_bytes=int(mem.alias_size_in_bytes),
                  temp_bytes=int(mem.temp_size_in_bytes),
                  code_bytes=int(mem.generated_code_size_in_bytes),
                  flops_per_device=_flops(compiled), compile_s=time.perf_counter() - start,
                  **common)


def compile_programs(topology: str, num_slices: int = 1, only: Sequence[str] | None = None,
                     report=None) -> list[Report]:
    """Compiles every program of the configured task (gin must be parsed) for `topology`:
    its train steps, then its eval programs (`only`: just these names). `report(r)` is called
    as each finishes (the CLI prints as it goes: a big compile takes minutes)."""
    devices = topology_devices(topology, num_slices)
    gen, _ = parse_topology(topology)
    program = configured_program(devices)
    named = [(n, f, program.task.flops_per_step()) for n, f in program.steps.items()]
    named += [(n, f, 0.0) for n, f in program.evals.items()]
    known = [n for n, _, _ in named]
    if only:
        unknown = sorted(set(only) - set(known))
        if unknown:
            raise TopologyError(f"--programs: {unknown} are not programs of this task "
                                f"(it has {known})")
        named = [x for x in named if x[0] in only]
    label = topology if num_slices == 1 else f"{num_slices} x {topology}"
    out = []
    for name, fn, flops in named:
        r = compile_one(program, name, fn, topology=label,
                        hbm_bytes=TPU_GENERATIONS[gen].hbm_bytes, model_flops=flops)
        out.append(r)
        if report:
            report(r)
    return out


def _pop_flag(rest: list[str], name: str) -> str | None:
    """Removes --name=value / --name value from `rest`; returns the value."""
    for i, arg in enumerate(rest):
        if arg.startswith(f"--{name}="):
            return rest.pop(i).split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(rest):
            rest.pop(i)
            return rest.pop(i)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from mufm.gin_flags import GinConfigError, parse, split_args
    from mufm.parallel.logical import ShardingRuleError
    from mufm.parallel.mesh import MeshError

    files, bindings, rest = split_args(list(sys.argv[1:] if argv is None else argv))
    topology = _pop_flag(rest, "topology")
    num_slices = _pop_flag(rest, "num_slices") or "1"
    programs = _pop_flag(rest, "programs")
    try:
        if rest:
            raise GinConfigError(f"unknown arguments {rest}: use --gin_file=..., --gin.NAME=value, "
                                 f"--topology=v5e:16x16 and optionally --num_slices=N, "
                                 f"--programs=NAME,...")
        if topology is None:
            raise TopologyError("--topology is required, e.g. --topology=v5e:16x16")
        parse_topology(topology)
        # A compile check needs no output folder: a placeholder satisfies %gin.REQUIRED.
        has_model_dir = any(b.replace(" ", "").startswith("MODEL_DIR=") for b in bindings)
        parse(files, ([] if has_model_dir else ['MODEL_DIR="/tmp/mufm_compile_check"']) + bindings)
        reports = compile_programs(
            topology, int(num_slices), only=programs.split(",") if programs else None,
            report=lambda r: print("\n".join(r.lines()) + "\n", flush=True))
    except (GinConfigError, MeshError, ShardingRuleError, TopologyError) as e:
        print(f"mufm.train.compile_check: {e}", file=sys.stderr)
        return 2
    line = summary_line(reports)
    print(line, flush=True)
    return 0 if line.startswith("fits=true") else 1


if __name__ == "__main__":
    sys.exit(main())
