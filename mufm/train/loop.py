"""`train()`: the one gin-configurable training entry function for every model family.

    python -m mufm.train --gin_file=experiments/<x>.gin --gin.MODEL_DIR=\"runs/x\"

Top to bottom: the task's configs checked -> mesh -> abstract state from shapes -> restore
the newest checkpoint (checking it belongs to this task) or initialise in place -> the
task's deterministic input positioned at the restored step -> its jitted, donated steps
with explicit shardings -> metrics, evaluation and async checkpoints -> final save.
`runs/<family>.gin` binds `train.task` to the family's task (`@LMTask()`, `@CodecTask()`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mufm.gin_flags import GinConfigError
from mufm.parallel.logical import Rules, sharding_context
from mufm.parallel.mesh import MeshConfig, build_mesh
from mufm.parallel.multihost import batch_sharding, global_batch, maybe_initialize_distributed
from mufm.train.checkpoint import CheckpointConfig, Checkpointer, write_gin_config
from mufm.train.restore import write_model_config
from mufm.train.state import ModelSpec, TrainState, abstract_state, initialize
from mufm.train.task import Optimizers, StepContext, Task

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
    model_dir: str
    train_steps: int
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: no evaluation during training
    eval_batches: int = 4
    max_nonfinite_streak: int = 5
    # (first, last) 1-based steps to trace with jax.profiler into MODEL_DIR/profile (view in
    # TensorBoard's profile plugin or Perfetto); None: no trace. Skip the first steps: they
    # compile.
    profile_steps: tuple[int, int] | None = None

    def __post_init__(self):
        if self.profile_steps is not None:
            first, last = (int(x) for x in self.profile_steps)
            if not 1 <= first <= last:
                raise ValueError(f"RunConfig.profile_steps={self.profile_steps}: need 1 <= first <= last")
            object.__setattr__(self, "profile_steps", (first, last))


@dataclasses.dataclass(frozen=True)
class Program:
    """What train() runs, built from configs and shapes alone: no data read, no array made.

    Shared with the ahead-of-time compile check (mufm.train.compile_check), so the programs
    it compiles for a TPU topology are exactly the ones training runs. Trace (call or lower)
    them inside `sharding_context(program.mesh, program.rules)` so activation constraints
    apply.
    """
    task: Task
    mesh: Mesh
    rules: Rules
    optimizers: Optimizers
    spec: ModelSpec
    abstract: TrainState  # ShapeDtypeStructs carrying their shardings
    shardings: TrainState
    batch_spec: dict[str, jax.ShapeDtypeStruct]  # the global batch, carrying its shardings
    steps: dict[str, Any]  # name -> jitted step, donates the state
    evals: dict[str, Any]  # name -> jitted eval program

    @property
    def tx(self):
        return self.optimizers.tx

    @property
    def batch_shardings(self) -> dict[str, NamedSharding]:
        return {k: v.sharding for k, v in self.batch_spec.items()}

    def step_at(self, step: int):
        """The jitted step that trains step `step` (0-based)."""
        return self.steps[self.task.step_name(step)]

    def global_batch(self, host: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's slice of a batch (the features of `batch_spec`) as global arrays."""
        return global_batch({k: host[k] for k in self.batch_spec}, self.mesh, self.rules)

    def initialize(self, seed: int) -> TrainState:
        """A fresh state in its shards, with the task's `pretrained_params` placed."""
        state = initialize(self.task.make_model, self.tx, self.shardings, seed)
        return place_params(state, self.task.pretrained_params(), self.shardings)


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def place_params(state: TrainState, arrays: Mapping[tuple, np.ndarray],
                 shardings: TrainState) -> TrainState:
    """`state` with the parameters at the paths of `arrays` (keys compared as strings)
    replaced by those host arrays, each built shard by shard in its parameter's sharding
    (`jax.make_array_from_callback`: every process supplies only its own devices' shards,
    and no array becomes a compiled constant). Every path must name a parameter of the same
    shape. Optimizer statistics are left as initialised (Adam's moments start at zero
    whatever the parameters)."""
    if not arrays:
        return state
    wanted = {tuple(str(k) for k in path): np.asarray(a) for path, a in arrays.items()}
    found: set[tuple[str, ...]] = set()

    def place(path, leaf, sharding):
        key = _path_key(path)
        if key not in wanted:
            return leaf
        value = wanted[key]
        if value.shape != leaf.shape:
            raise ValueError(f"pretrained parameter {'/'.join(key)}: array {value.shape}, "
                             f"parameter {leaf.shape}")
        found.add(key)
        value = value.astype(leaf.dtype)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: value[index])

    params = jax.tree_util.tree_map_with_path(place, state.params, shardings.params)
    missing = sorted(set(wanted) - found)
    if missing:
        raise KeyError(f"pretrained parameters not in the model: {['/'.join(m) for m in missing]}")
    return state.replace(params=params)


def build_program(task: Task, mesh: MeshConfig, run: RunConfig,
                  devices: Sequence[jax.Device] | None = None) -> Program:
    """Mesh, optimizers, abstract sharded state and every jitted program of `task` for
    `devices` (default: every device of this process's backend; the compile check passes a
    TPU topology's compile-only devices)."""
    task.validate(run)
    device_mesh = build_mesh(mesh, devices)  # fails here, before any compute, if it does not fit
    rules = mesh.rules
    optimizers = task.make_optimizer(run.train_steps)
    with sharding_context(device_mesh, rules):
        abstract, shardings, spec = abstract_state(task.make_model, optimizers.tx, device_mesh,
                                                   rules, run.seed)
    batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                          sharding=batch_sharding(device_mesh, rules, len(v.shape)))
                  for k, v in task.batch_spec().items()}
    batch_sh = {k: v.sharding for k, v in batch_spec.items()}
    ctx = StepContext(spec=spec, optimizers=optimizers, seed=run.seed)
    steps = {name: jax.jit(fn, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                           donate_argnums=(0,))
             for name, fn in task.train_steps(ctx).items()}
    evals = {name: jax.jit(fn, in_shardings=(shardings, batch_sh))
             for name, fn in task.eval_programs(ctx).items()}
    return Program(task=task, mesh=device_mesh, rules=rules, optimizers=optimizers, spec=spec,
                   abstract=abstract, shardings=shardings, batch_spec=batch_spec, steps=steps,
                   evals=evals)


@gin.configurable
def train(task: Task = gin.REQUIRED, checkpoint: CheckpointConfig = gin.REQUIRED,
          mesh: MeshConfig = gin.REQUIRED, run: RunConfig = gin.REQUIRED) -> dict[str, float]:
    """Trains `task`; returns the last logged metrics."""
    if not isinstance(task, Task):
        raise GinConfigError(f"train.task must be a Task (e.g. @LMTask(), @CodecTask()), got "
                             f"{type(task).__name__}")
    maybe_initialize_distributed()
    program = build_program(task, mesh, run)
    task_name = task.data.mixture_or_task_name

    with sharding_context(program.mesh, program.rules):
        ckpt = Checkpointer(run.model_dir, checkpoint)
        state = restore_or_initialize(ckpt, program.abstract, lambda: program.initialize(run.seed),
                                      task_name=task_name)
        start = int(state.step)
        write_gin_config(run.model_dir, gin.operative_config_str())
        write_model_config(run.model_dir, task)
        logger = _logger(task, run, start)

        def evaluate(state, step):
            result = task.evaluate(program, state, run.eval_batches)
            logger.write_eval(step, result.scalars)
            if result.audios:
                logger.write_audios(step, result.audios, result.sample_rate)

        batches = (program.global_batch(b) for b in task.train_batches(start))
        return run_steps(program.step_at, state, batches, run=run, checkpoint=checkpoint,
                         ckpt=ckpt, logger=logger, task_name=task_name, evaluate=evaluate)


class CheckpointMismatchError(ValueError):
    """MODEL_DIR holds checkpoints of another task."""


def restore_or_initialize(ckpt: Checkpointer, abstract: TrainState, init: Callable[[], TrainState],
                          *, task_name: str) -> TrainState:
    """The newest checkpoint restored onto `abstract`'s shardings, else `init()`. A checkpoint
    whose input position was recorded for another seqio task is refused: resuming would skip
    batches of a stream it never read."""
    latest = ckpt.latest_step()
    if latest is None:
        return init()
    state, data_pos = ckpt.restore(latest, abstract)
    saved_task = data_pos.get("task")
    if saved_task is not None and saved_task != task_name:
        raise CheckpointMismatchError(
            f"{ckpt.directory} step {latest} was trained on task {saved_task!r}, this run reads "
            f"{task_name!r}: use a new MODEL_DIR (or the task it was trained on)")
    if int(data_pos.get("batches", latest)) != int(state.step):
        raise CheckpointMismatchError(
            f"{ckpt.directory} step {latest}: input position {data_pos.get('batches')} batches "
            f"does not match the state's step {int(state.step)}")
    log.info("resumed from step %d (input position %s)", latest, data_pos)
    return state


def run_steps(step_at: Callable[[int], Callable], state, batches: Iterator, *, run: RunConfig,
              checkpoint: CheckpointConfig, ckpt: Checkpointer, logger, task_name: str,
              evaluate: Callable[[Any, int], None] | None = None) -> dict[str, float]:
    """The step loop: steps from state.step to run.train_steps on global batches, step i
    running the jitted `step_at(i)(state, batch)`; metrics every log_every,
    `evaluate(state, step)` every eval_every, a checkpoint (with the input position) every
    save_every and at the end, and a stop once run.max_nonfinite_streak updates in a row
    were skipped. Closes ckpt and logger."""
    start = int(state.step)
    last: dict[str, float] = {}
    prev_metrics = None
    tracer = _Tracer(run)
    try:
        for step in range(start, run.train_steps):
            tracer.before(step + 1)
            state, metrics = step_at(step)(state, next(batches))
            tracer.after(step + 1, state)
            logger.add(metrics)
            # Check the previous step's streak: it is already computed, so this does not
            # stall the dispatch of the step just queued.
            if prev_metrics is not None:
                _check_nonfinite(prev_metrics, run.max_nonfinite_streak, step)
            prev_metrics = metrics
            done = step + 1
            if done % run.log_every == 0 or done == run.train_steps:
                last = logger.flush(done)
            if evaluate and run.eval_every and (done % run.eval_every == 0 or done == run.train_steps):
                evaluate(state, done)
            if done % checkpoint.save_every == 0 or done == run.train_steps:
                ckpt.save(done, state, {"batches": done, "task": task_name}, force=True)
        if prev_metrics is not None:
            _check_nonfinite(prev_metrics, run.max_nonfinite_streak, run.train_steps)
    finally:
        tracer.stop()
        ckpt.close()
        logger.close()
    return last


class _Tracer:
    """A jax.profiler trace of RunConfig.profile_steps (1-based, inclusive) on process 0."""

    def __init__(self, run: RunConfig):
        self.window = run.profile_steps if jax.process_index() == 0 else None
        self.dir = os.path.join(run.model_dir, "profile")
        self.active = False

    def before(self, step: int) -> None:
        if self.window and step == self.window[0]:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step == self.window[1]:
            jax.block_until_ready(state)  # the traced steps' device work inside the trace
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            log.info("profile of steps %s written to %s", self.window, self.dir)


def _logger(task: Task, run: RunConfig, start: int):
    from mufm.train.metrics import MetricsLogger

    return MetricsLogger(run.model_dir, total_steps=run.train_steps, start_step=start,
                         units_per_step=task.units_per_step(), flops_per_step=task.flops_per_step(),
                         postfix=task.progress_metrics)


def _check_nonfinite(metrics, limit: int, step: int) -> None:
    streak = int(metrics["nonfinite_streak"])
    if streak >= limit:
        raise NonFiniteLossError(
            f"{streak} consecutive steps (up to step {step}) had a non-finite loss or gradient; "
            f"their updates were skipped and the last checkpoint holds the last good state. "
            f"Lower the learning rate, enable z_loss or check the data.")
