"""Ahead-of-time compile of every program a task trains with, for a TPU topology, on a
machine with no TPU (MaxText keeps `train_compile.py` beside `train.py`; so does mufm).

    python -m mufm.train.compile_check --gin_file=experiments/musiclm_stage_v5e_256.gin \
        --topology=v5e:16x16 [--num_slices=2] [--programs=train,eval] [--gin.NAME=value ...] \
        [--json=reports.json]
    python -m mufm.train.compile_check --all [--table=PATH] [--out_dir=DIR] [--only=NAME,...]
        [--digests]

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

`--all` walks every pod experiment (`configs/experiments/*_v5e_<chips>.gin`, the topology
from the slice size in the name: v5e-64 -> v5e:8x8), compiling each in its own subprocess
(gin is global state), and prints one Markdown table of all their programs: per-chip bytes,
HBM, XLA's FLOPs and estimated time per step, and the model FLOP utilisation the step would
reach at the chip's peak if it ran at that estimated time. Exit status 0 when every program
of every experiment fits.
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


def use_compile_only_environment() -> None:
    """Sets COMPILE_ONLY_ENV (where unset) and a CPU host backend: call before jax is first
    imported, in a process whose only target is a --topology."""
    for k, v in COMPILE_ONLY_ENV.items():
        os.environ.setdefault(k, v)
    # The topology devices are compile-only and need no TPU runtime; the host backend is
    # the CPU (left unset, jax would try to bring up a TPU runtime and fail without chips).
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


if __name__ == "__main__":
    use_compile_only_environment()

import dataclasses
import re
import sys
import time
from typing import Mapping, Sequence

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    device_kind: str  # what jax reports, to check libtpu gave us the chip we asked for
    hbm_bytes: int  # per JAX device (a chip, or a core where cores are separate devices)
    peak_flops: float  # dense bf16 FLOP/s per JAX device
    chip_config: str | None = None  # libtpu chip config: v4 runs megacore (1 device/chip)


# HBM and peak bf16 FLOP/s per JAX device, from the Cloud TPU system-architecture pages. v2/v3
# expose each of the two cores of a chip as a device with half the chip's HBM and FLOP/s; v4
# is run megacore like on a real VM.
TPU_GENERATIONS = {
    "v2": TpuGeneration("TPU v2", 8 * GiB, 22.5e12),
    "v3": TpuGeneration("TPU v3", 16 * GiB, 61.5e12),
    "v4": TpuGeneration("TPU v4", 32 * GiB, 275e12, chip_config="megacore"),
    "v5e": TpuGeneration("TPU v5 lite", 16 * GiB, 197e12),
    "v5p": TpuGeneration("TPU v5", 95 * GiB, 459e12),
    "v6e": TpuGeneration("TPU v6 lite", 32 * GiB, 918e12),
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
    # XLA's cost model: the step's estimated time on one device (0: not given, or no compile)
    # and the device's peak bf16 FLOP/s.
    estimated_s: float = 0.0
    peak_flops: float = 0.0

    @property
    def mfu_at_estimate(self) -> float | None:
        """Model FLOPs per device / (estimated step time x peak): the MFU the step would reach
        if it ran at XLA's estimate. None without model FLOPs (eval programs) or without an
        estimate: libtpu gives none (a negative `optimal_seconds`) for a program with a
        loop in it, e.g. a scanned layer stack."""
        if not (self.estimated_s and self.model_flops and self.peak_flops):
            return None
        return self.model_flops / self.num_devices / (self.estimated_s * self.peak_flops)

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
        if self.estimated_s:
            mfu = self.mfu_at_estimate
            out.append(f"XLA estimated time  {self.estimated_s * 1e3:.3f} ms per step"
                       + (f": MFU {mfu * 100:.1f} % at the chip's peak "
                          f"({self.peak_flops:.3g} FLOP/s)" if mfu is not None else ""))
        return out

    def to_json(self) -> dict:
        return dict(dataclasses.asdict(self), per_chip_bytes=self.per_chip_bytes,
                    fits=self.fits, mfu_at_estimate=self.mfu_at_estimate)


def summary_line(reports: Sequence[Report]) -> str:
    worst = max(reports, key=lambda r: r.per_chip_bytes)
    fits = all(r.fits for r in reports)
    return (f"fits={str(fits).lower()} per_chip_bytes={worst.per_chip_bytes} "
            f"hbm_bytes={worst.hbm_bytes}")


def _cost(compiled) -> tuple[float, float]:
    """(XLA's FLOPs, its estimated seconds: libtpu's `optimal_seconds`, 0 if not given) of
    one device's program. libtpu reports optimal_seconds < 0 (no estimate) for a program
    that contains a while loop (measured with libtpu 0.0.42.1: a scanned 4-layer LM gives
    -6.0, the same LM unrolled 3.4e-4 s); such programs get no estimate here."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    cost = cost or {}
    return float(cost.get("flops", 0.0)), max(float(cost.get("optimal_seconds", 0.0)), 0.0)


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    import jax
    import numpy as np

    # PRNG key dtypes (key<fry>) are no numpy dtype but know their own itemsize.
    size = lambda dtype: dtype.itemsize if hasattr(dtype, "itemsize") else np.dtype(dtype).itemsize
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * size(x.dtype)
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
                model_flops: float, peak_flops: float = 0.0) -> Report:
    from mufm.parallel.logical import sharding_context

    start = time.perf_counter()
    with sharding_context(program.mesh, program.rules):
        lowered = fn.lower(program.abstract, program.batch_spec)
        state = _shard_bytes(program.abstract)
        # Without a compile, the donated state counts as argument, output and alias.
        return compile_lowered(lowered, start, (program.abstract, program.batch_spec),
                               state, state, program=name, topology=topology,
                               num_devices=program.mesh.devices.size, hbm_bytes=hbm_bytes,
                               model_flops=model_flops, peak_flops=peak_flops)


def compile_lowered(lowered, start: float, arguments, output_bytes: int, alias_bytes: int,
                    **report) -> Report:
    """The Report of compiling `lowered` (started at `start`, perf_counter). The TPU
    compiler refuses a program that exceeds HBM and gives no memory_analysis(); the
    figures are then rebuilt from the shardings of `arguments` (abstract arrays), the
    given output/alias bytes and the compiler's message."""
    import jax

    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return Report(argument_bytes=_shard_bytes(arguments), output_bytes=output_bytes,
                      alias_bytes=alias_bytes, temp_bytes=_oom_temp_bytes(str(e)), code_bytes=0,
                      flops_per_device=0.0, compile_s=time.perf_counter() - start,
                      oom_message=str(e).strip().splitlines()[0], **report)
    mem = compiled.memory_analysis()
    flops, estimated_s = _cost(compiled)
    return Report(argument_bytes=int(mem.argument_size_in_bytes),
                  output_bytes=int(mem.output_size_in_bytes),
                  alias_bytes=int(mem.alias_size_in_bytes),
                  temp_bytes=int(mem.temp_size_in_bytes),
                  code_bytes=int(mem.generated_code_size_in_bytes),
                  flops_per_device=flops, estimated_s=estimated_s,
                  compile_s=time.perf_counter() - start, **report)


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
                        hbm_bytes=TPU_GENERATIONS[gen].hbm_bytes, model_flops=flops,
                        peak_flops=TPU_GENERATIONS[gen].peak_flops)
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


# Pod experiments are named <what>_v5e_<chips>.gin after the slice they are written for;
# the v5e slice shapes Cloud TPU offers (v5litepod-<chips>), as compile-check topologies.
V5E_SLICES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_POD_EXPERIMENT_RE = re.compile(r"^(.+)_v5e_(\d+)\.gin$")
# Compile checks read no data and write nothing: placeholders satisfy %gin.REQUIRED paths.
# TOKENS_DIR is a local path that does not exist: a stage task then registers without its
# manifest (a gs:// path would be looked up, which needs the network).
PLACEHOLDERS = {"MODEL_DIR": '"/tmp/mufm_compile_check"',
                "TOKENS_DIR": '"/tmp/mufm_compile_check/no_tokens"'}


def config_digest() -> str:
    """A digest of the parsed gin config (every binding of every included file): the table
    of `--all` records it per experiment, and the test suite checks that the configs still
    have the digests the table was made with (a changed pod config needs a new walk)."""
    import hashlib

    import gin

    # Without the placeholders' own definitions: they name no data, only satisfy REQUIRED.
    lines = [line for line in gin.config_str().splitlines()
             if not any(line.startswith(f"{k} = ") for k in PLACEHOLDERS)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


DIGESTS_HEADER = "Config digests (`--all --digests`; checked against the configs by the tests):"


def pod_experiments(config_dir: str | None = None) -> list[tuple[str, str]]:
    """(gin file relative to configs/, topology) of every configs/experiments/*_v5e_<chips>.gin."""
    import glob

    config_dir = config_dir or os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    out = []
    for path in sorted(glob.glob(os.path.join(config_dir, "experiments", "*_v5e_*.gin"))):
        name = os.path.basename(path)
        m = _POD_EXPERIMENT_RE.match(name)
        if not m or int(m.group(2)) not in V5E_SLICES:
            raise TopologyError(f"{path}: a pod experiment is named <what>_v5e_<chips>.gin with "
                                f"<chips> one of {sorted(V5E_SLICES)}")
        out.append((f"experiments/{name}", f"v5e:{V5E_SLICES[int(m.group(2))]}"))
    return out


def _table(rows: Sequence[tuple[str, str, float, list[dict]]]) -> str:
    """Markdown table of (gin file, topology, wall seconds, its reports as JSON dicts)."""
    g = lambda b: f"{b / GiB:.2f}"
    lines = ["| experiment | topology | program | per chip GiB | HBM GiB | fits | XLA FLOPs/chip "
             "| model FLOPs/chip | XLA est. ms | MFU at est. | compile s |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for gin_file, topology, wall_s, reports in rows:
        for i, r in enumerate(reports):
            model = r["model_flops"] / r["num_devices"] if r["model_flops"] else 0.0
            mfu = "-" if r["mfu_at_estimate"] is None else f"{r['mfu_at_estimate'] * 100:.1f} %"
            est = f"{r['estimated_s'] * 1e3:.2f}" if r["estimated_s"] else "-"
            lines.append(
                f"| {os.path.basename(gin_file)[:-4] if i == 0 else ''} "
                f"| {topology if i == 0 else ''} | {r['program']} "
                f"| {g(r['per_chip_bytes'])} | {g(r['hbm_bytes'])} "
                f"| {'yes' if r['fits'] else '**no**'} "
                f"| {r['flops_per_device']:.3g} | {f'{model:.3g}' if model else '-'} "
                f"| {est} | {mfu} "
                f"| {r['compile_s']:.0f} |")
    return "\n".join(lines)


def _digests(extra: Sequence[str] = ()) -> dict[str, str]:
    """{gin file: config digest} of every pod experiment, parsed in this process (no libtpu)."""
    from mufm.gin_flags import parse

    out = {}
    for gin_file, _ in pod_experiments():
        parse([gin_file], [f"{k}={v}" for k, v in PLACEHOLDERS.items()] + list(extra))
        out[gin_file] = config_digest()
    return out


def _digest_block(digests: Mapping[str, str]) -> str:
    return "\n".join([DIGESTS_HEADER] + [f"- `{os.path.basename(g)[:-4]}`: `{d}`"
                                          for g, d in digests.items()])


def check_all(table_path: str | None = None, extra: Sequence[str] = (),
              digests_only: bool = False, out_dir: str | None = None,
              only: Sequence[str] | None = None) -> int:
    """Compiles every pod experiment for its slice (one subprocess each: gin is global state)
    and prints (and with `table_path` writes) the table, then each experiment's config
    digest. `out_dir`: each experiment's record (reports, digest, wall time) is kept there
    as <name>.json as it finishes, and a record whose digest is still the config's is used
    instead of compiling again (a walk cut short resumes; a changed config is compiled
    anew). `only`: just these experiments (names without .gin). `digests_only`: just the
    digests. 0: all fit; 1: one does not; 2: one failed."""
    import json
    import subprocess
    import tempfile

    digests = _digests(extra)
    if digests_only:
        print(_digest_block(digests), flush=True)
        return 0
    rows, status = [], 0
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # a test session's fake-CPU-device flags are not for libtpu
    with tempfile.TemporaryDirectory() as tmp:
        for gin_file, topology in pod_experiments():
            name = os.path.basename(gin_file)[:-4]
            if only and name not in only:
                continue
            record_path = os.path.join(out_dir or tmp, f"{name}.json")
            record = None
            if out_dir and os.path.exists(record_path):
                with open(record_path) as f:
                    record = json.load(f)
                if record.get("digest") != digests[gin_file] or record.get("topology") != topology:
                    record = None  # made for another config: compile again
            if record is None:
                out = os.path.join(tmp, "reports.json")
                start = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "mufm.train.compile_check", f"--gin_file={gin_file}",
                     f"--topology={topology}", f"--json={out}", *extra],
                    capture_output=True, text=True, env=env)
                wall_s = time.perf_counter() - start
                if proc.returncode not in (0, 1) or not os.path.exists(out):
                    print(f"{gin_file} on {topology}: compile check failed (status "
                          f"{proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr,
                          flush=True)
                    status = 2
                    continue
                with open(out) as f:
                    record = {"gin_file": gin_file, "topology": topology, "wall_s": wall_s,
                              "digest": digests[gin_file], "reports": json.load(f)}
                os.remove(out)
                if out_dir:
                    os.makedirs(out_dir, exist_ok=True)
                    with open(record_path, "w") as f:
                        json.dump(record, f, indent=1)
            fits = all(r["fits"] for r in record["reports"])
            status = max(status, 0 if fits else 1)
            print(f"{gin_file} on {topology}: fits={str(fits).lower()} "
                  f"({record['wall_s']:.0f} s)", flush=True)
            rows.append((gin_file, topology, record["wall_s"], record["reports"]))
    text = _table(rows) + "\n\n" + _digest_block(digests)
    print(text, flush=True)
    if table_path:
        with open(table_path, "w") as f:
            f.write(text + "\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    from mufm.gin_flags import GinConfigError, parse, split_args
    from mufm.parallel.logical import ShardingRuleError
    from mufm.parallel.mesh import MeshError

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--all" in argv:
        argv.remove("--all")
        table = _pop_flag(argv, "table")
        out_dir = _pop_flag(argv, "out_dir")
        only = _pop_flag(argv, "only")
        digests_only = "--digests" in argv
        return check_all(table, [a for a in argv if a != "--digests"],
                         digests_only=digests_only, out_dir=out_dir,
                         only=only.split(",") if only else None)
    files, bindings, rest = split_args(argv)
    json_path = _pop_flag(rest, "json")
    digest_only = "--digest" in rest
    if digest_only:
        rest.remove("--digest")
    topology = _pop_flag(rest, "topology")
    num_slices = _pop_flag(rest, "num_slices") or "1"
    programs = _pop_flag(rest, "programs")
    try:
        if rest:
            raise GinConfigError(f"unknown arguments {rest}: use --gin_file=..., --gin.NAME=value, "
                                 f"--topology=v5e:16x16 and optionally --num_slices=N, "
                                 f"--programs=NAME,..., --json=PATH, --digest; or --all "
                                 f"[--table=PATH] [--out_dir=DIR] [--digests]")
        if topology is None and not digest_only:
            raise TopologyError("--topology is required, e.g. --topology=v5e:16x16")
        if topology is not None:
            parse_topology(topology)
        given = {b.split("=", 1)[0].strip() for b in bindings if "=" in b}
        parse(files, [f"{k}={v}" for k, v in PLACEHOLDERS.items() if k not in given] + bindings)
        print(f"config_digest={config_digest()}", flush=True)
        if digest_only:
            return 0
        reports = compile_programs(
            topology, int(num_slices), only=programs.split(",") if programs else None,
            report=lambda r: print("\n".join(r.lines()) + "\n", flush=True))
    except (GinConfigError, MeshError, ShardingRuleError, TopologyError) as e:
        print(f"mufm.train.compile_check: {e}", file=sys.stderr)
        return 2
    return finish(reports, json_path)


def finish(reports: Sequence[Report], json_path: str | None = None) -> int:
    """Writes the reports to `json_path` (if given), prints the summary line and returns
    the exit status: 0 when every program fits, 1 otherwise."""
    if json_path:
        import json

        with open(json_path, "w") as f:
            json.dump([r.to_json() for r in reports], f, indent=1)
    line = summary_line(reports)
    print(line, flush=True)
    return 0 if line.startswith("fits=true") else 1


if __name__ == "__main__":
    sys.exit(main())
