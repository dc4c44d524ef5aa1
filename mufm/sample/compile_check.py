"""Ahead-of-time compile of the cascade's generation programs for a TPU topology, on a
machine with no TPU: what an evaluation job (`python -m mufm.evaluate`) or a generation
job runs on a pod slice, checked to compile and to fit before any chip is booked.

    python -m mufm.sample.compile_check --topology=v5e:4x4 --recipe=pod --batch=64
    python -m mufm.sample.compile_check --topology=v5e:2x2 --gin_file=configs/generate/cpu.gin \
        [--gin.GenerateConfig.coarse_sampling=...]
    python -m mufm.sample.compile_check --topology=v5e:2x2 --recipe=tiny \
        [--semantic=RUN_DIR_OR_GIN] [--coarse=...] [--fine=...] [--batch=N] [--json=PATH]

Each stage LM's window sampler (`mufm.sample.decode.sample_parts`: the prefill and the
`lax.scan` decoding loop over a KV cache) is lowered exactly as `Cascade` calls it with a
mesh (`GenerateConfig.mesh`): the batch of rows split over one `data` axis of every chip of
the topology, the weights replicated, for the stage's first window (its full length, no
carried prefix: the most decoding steps, the same cache as every later window). Only
shapes are needed, so the stages come from their experiment gin files (`--recipe`: tiny,
cpu, or pod, the v5e-256 stage experiments) or from run directories (model_config.json
alone, no weights read); `--gin_file` names a generate config, whose runs and sampling
configs (guidance doubles the rows) are used. MuLan and the codec run on one device of
each host in `Cascade` and are not compiled here.

Prints the per-chip memory and FLOPs of each stage (as `mufm.train.compile_check` does)
and ends with `fits=<true|false> per_chip_bytes=<int> hbm_bytes=<int>`. Exit status: 0
fits, 1 does not fit, 2 bad configuration or topology.
"""
from __future__ import annotations

from mufm.train.compile_check import use_compile_only_environment

if __name__ == "__main__":  # before jax is imported (mufm/train/compile_check.py says why)
    use_compile_only_environment()

import argparse
import dataclasses
import math
import sys
import time
from typing import Any, Sequence

STAGES = ("semantic", "coarse", "fine")


def _recipes() -> dict:
    """Stage experiments by recipe name: {stage: (gin file, bindings)}."""
    from mufm.sample.random_runs import CPU, TINY

    return {"tiny": TINY.stages, "cpu": CPU.stages,
            "pod": {name: (f"experiments/stage_{name}_v5e_256.gin", ()) for name in STAGES}}


@dataclasses.dataclass
class Stage:
    """What one stage's sampler is compiled from: shapes, never weights."""
    name: str
    source: str  # the gin file or run directory it came from
    layout: Any  # StageLayout
    graphdef: Any
    abstract: Any  # nnx.State of jax.ShapeDtypeStruct
    sampling: Any  # SamplingConfig


def _from_configs(name: str, source: str, task_class, configs: dict, sampling) -> Stage:
    from flax import nnx

    from mufm.lm.task import stage_layout

    layout = stage_layout(configs.get("data"))
    if layout is None:
        raise ValueError(f"{name} stage {source}: its data config has no stage token task layout")
    if layout.name != name:
        raise ValueError(f"{name} stage {source}: a {layout.name!r} stage's layout")
    abstract = nnx.eval_shape(lambda: task_class.inference_model(configs, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return Stage(name, source, layout, graphdef, state, sampling)


def stage_from_gin(name: str, gin_file: str, bindings: Sequence[str], sampling) -> Stage:
    """The stage an experiment gin file trains (the trainer's task, parsed then cleared)."""
    import gin

    from mufm.gin_flags import parse
    from mufm.train.compile_check import PLACEHOLDERS

    parse([gin_file], [f"{k}={v}" for k, v in PLACEHOLDERS.items()] + list(bindings))
    try:
        task = gin.query_parameter("train.task").scoped_configurable_fn()
    finally:
        gin.clear_config()
    return _from_configs(name, gin_file, type(task), task.model_configs(), sampling)


def stage_from_run(name: str, run_dir: str, sampling) -> Stage:
    """The stage a run directory holds, from its model_config.json (no weights read)."""
    from mufm.train.restore import _import, config_from_json, read_model_config, resolve

    model_dir, _ = resolve(run_dir, family="lm")
    record = read_model_config(model_dir)
    configs = {k: config_from_json(v) for k, v in record["configs"].items()}
    return _from_configs(name, run_dir, _import(record["task"]), configs, sampling)


def compile_stage(stage: Stage, devices, batch: int, topology: str):
    """The Report of `stage`'s first-window sampler for `batch` rows over `devices`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from mufm.sample.decode import sample_parts
    from mufm.train.compile_check import TPU_GENERATIONS, compile_lowered, parse_topology

    mesh = Mesh(np.asarray(devices), ("data",))
    rows = math.ceil(batch / len(devices)) * len(devices)  # `sample` pads rows the same way
    prompts_rows = 2 * rows if stage.sampling.guided else rows
    layout = stage.layout
    p, n = layout.prompt_length, layout.target.num_tokens(layout.target.frames)
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    spec = lambda shape, dtype, sharding=replicated: jax.ShapeDtypeStruct(shape, dtype,
                                                                          sharding=sharding)
    state = jax.tree.map(lambda x: spec(x.shape, x.dtype), stage.abstract)
    key_dtype = jax.eval_shape(lambda: jax.random.key(0)).dtype
    args = (state, spec((prompts_rows, p), jnp.int32, split), spec((p + n,), jnp.int32),
            spec((p + n,), jnp.int32), spec((), key_dtype), spec((rows,), jnp.float32))
    start = time.perf_counter()
    lowered = sample_parts.lower(stage.graphdef, *args, num_tokens=n, config=stage.sampling)
    gen = TPU_GENERATIONS[parse_topology(topology)[0]]
    out_bytes = rows * n * 4 // len(devices)
    report = compile_lowered(
        lowered, start, args, out_bytes, 0,
        program=f"{stage.name} window ({rows} rows, {p} prompt + {n} new tokens)",
        topology=topology, num_devices=len(devices), hbm_bytes=gen.hbm_bytes, model_flops=0.0,
        peak_flops=gen.peak_flops)
    # XLA's FLOPs and time estimate count the decoding loop's body once: one token of the
    # window's n, not the window. The estimate would read as the window's time; drop it.
    return dataclasses.replace(report, estimated_s=0.0)


def _stages(args) -> list[Stage]:
    from mufm.sample.cascade import DEFAULT_CONFIGS

    sampling = dict(DEFAULT_CONFIGS)
    sources: dict[str, tuple] = {}
    if args.gin_file:
        from mufm.generate.config import GenerateConfig
        from mufm.gin_flags import parse

        parse(args.gin_file, args.gin)
        try:
            g = GenerateConfig()
        finally:
            import gin

            gin.clear_config()
        sampling = {"semantic": g.semantic_sampling, "coarse": g.coarse_sampling,
                    "fine": g.fine_sampling}
        sources = {name: (getattr(g, name), ()) for name in STAGES if getattr(g, name)}
    if args.recipe:
        sources = dict(_recipes()[args.recipe], **sources)
    # Each source: (a run dir or an experiment gin file, the gin file's bindings).
    sources.update({name: (getattr(args, name), ()) for name in STAGES if getattr(args, name)})
    missing = [name for name in STAGES if name not in sources]
    if missing:
        raise ValueError(f"no source for the {', '.join(missing)} stage: give --recipe, a "
                         f"--gin_file generate config or --{missing[0]}=RUN_DIR_OR_GIN")
    return [stage_from_gin(name, path, bindings, sampling[name]) if path.endswith(".gin")
            else stage_from_run(name, path, sampling[name])
            for name, (path, bindings) in ((n, sources[n]) for n in STAGES)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mufm.sample.compile_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", required=True, help="e.g. v5e:2x2, v5e:4x4, v4:2x2x2")
    p.add_argument("--recipe", choices=sorted(_recipes()),
                   help="stage experiments: tiny, cpu or pod (the v5e-256 stage configs)")
    # --gin_file=FILE (a generate config: its runs and sampling) and --gin.NAME=VALUE are
    # taken out first, as every mufm entry point reads them (mufm.gin_flags.split_args).
    for name in STAGES:
        p.add_argument(f"--{name}", default="", help=f"the {name} stage: a run dir or an "
                                                     f"experiment gin file")
    p.add_argument("--batch", type=int, default=0,
                   help="rows generated at once (default: one per chip); padded to a multiple "
                        "of the chips")
    p.add_argument("--json", default="", help="write the reports here")
    from mufm.gin_flags import split_args

    files, bindings, rest = split_args(list(sys.argv[1:] if argv is None else argv))
    args = p.parse_args(rest)
    args.gin_file, args.gin = files, bindings

    from mufm.gin_flags import GinConfigError
    from mufm.train.compile_check import TopologyError, finish, topology_devices

    try:
        if args.batch < 0:
            raise ValueError(f"--batch={args.batch} must be >= 1 (0: one row per chip)")
        devices = topology_devices(args.topology)
        stages = _stages(args)
    except (GinConfigError, TopologyError, ValueError, OSError) as e:
        print(f"mufm.sample.compile_check: {e}", file=sys.stderr)
        return 2
    batch = args.batch or len(devices)
    reports = []
    for stage in stages:
        print(f"[compile_check] {stage.name} stage from {stage.source}: {stage.sampling}",
              flush=True)
        r = compile_stage(stage, devices, batch, args.topology)
        print("\n".join(r.lines()) + "\n", flush=True)
        reports.append(r)
    return finish(reports, args.json or None)


if __name__ == "__main__":
    sys.exit(main())
