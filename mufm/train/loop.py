"""`train()`: the one gin-configurable entry function for training, top to bottom.

mesh -> abstract state from shapes -> restore the newest checkpoint or initialise in
place -> deterministic input positioned at the restored step -> jitted, donated step with
explicit shardings -> metrics, evaluation and async checkpoints -> final save.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Sequence

import gin
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from mufm.data.pipeline import DataConfig, batch_feature_names, host_batches
from mufm.models.lm import LMConfig, StageLM, train_flops_per_token
from mufm.parallel.logical import Rules, sharding_context
from mufm.parallel.mesh import MeshConfig, build_mesh
from mufm.parallel.multihost import batch_sharding, global_batch, maybe_initialize_distributed
from mufm.train.checkpoint import CheckpointConfig, Checkpointer, write_gin_config
from mufm.train.optim import OptimizerConfig, make_optimizer
from mufm.train.state import ModelSpec, TrainState, abstract_state, initialize
from mufm.train.step import StepConfig, eval_step, summarize, train_step

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
    z_loss: float = 0.0


def make_model_fn(cfg: LMConfig):
    def make(rngs):
        return StageLM(cfg, rngs=rngs)
    return make


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """What train() runs, built from configs and shapes alone: no data read, no array made.

    Shared with the ahead-of-time compile check (mufm.parallel.compile_check), so the step
    it compiles for a TPU topology is exactly the one training runs. Trace (call or lower)
    the steps inside `sharding_context(program.mesh, program.rules)` so activation
    constraints apply.
    """
    mesh: Mesh
    rules: Rules
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    make_model: Callable
    spec: ModelSpec
    abstract: TrainState  # ShapeDtypeStructs carrying their shardings
    shardings: TrainState
    step_cfg: StepConfig
    batch_sharding: NamedSharding
    train_step: Any  # jitted, donates the state
    eval_step: Any  # jitted


def build_program(model: LMConfig, data: DataConfig, optimizer: OptimizerConfig, mesh: MeshConfig,
                  run: RunConfig, devices: Sequence[jax.Device] | None = None) -> TrainProgram:
    """Mesh, optimizer, abstract sharded state and the jitted steps for `devices`
    (default: every device of this process's backend; the compile check passes a TPU
    topology's compile-only devices)."""
    device_mesh = build_mesh(mesh, devices)  # fails here, before any compute, if it does not fit
    rules = mesh.rules
    tx, schedule = make_optimizer(optimizer, run.train_steps)
    make_model = make_model_fn(model)
    step_cfg = StepConfig(grad_accum_steps=optimizer.grad_accum_steps, z_loss=run.z_loss,
                          stream_names=tuple(data.stream_names), seed=run.seed)
    with sharding_context(device_mesh, rules):
        abstract, shardings, spec = abstract_state(make_model, tx, device_mesh, rules, run.seed)
    batch_sh = batch_sharding(device_mesh, rules, 2)
    p_train = jax.jit(functools.partial(train_step, spec=spec, tx=tx, schedule=schedule, cfg=step_cfg),
                      in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                      donate_argnums=(0,))
    p_eval = jax.jit(functools.partial(eval_step, spec=spec, cfg=step_cfg),
                     in_shardings=(shardings, batch_sh))
    return TrainProgram(mesh=device_mesh, rules=rules, tx=tx, schedule=schedule,
                        make_model=make_model, spec=spec, abstract=abstract, shardings=shardings,
                        step_cfg=step_cfg, batch_sharding=batch_sh, train_step=p_train,
                        eval_step=p_eval)


def abstract_batch(program: TrainProgram, data: DataConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the train step receives, as sharded shapes (AOT lowering)."""
    shape = (data.batch_size, data.sequence_length)
    return {name: jax.ShapeDtypeStruct(shape, np.int32, sharding=program.batch_sharding)
            for name in batch_feature_names(data)}


@gin.configurable
def train(model: LMConfig = gin.REQUIRED, data: DataConfig = gin.REQUIRED,
          optimizer: OptimizerConfig = gin.REQUIRED, checkpoint: CheckpointConfig = gin.REQUIRED,
          mesh: MeshConfig = gin.REQUIRED, run: RunConfig = gin.REQUIRED) -> dict[str, float]:
    """Trains a stage LM; returns the last logged metrics."""
    maybe_initialize_distributed()
    program = build_program(model, data, optimizer, mesh, run)
    device_mesh, rules = program.mesh, program.rules
    shardings, step_cfg = program.shardings, program.step_cfg
    p_train, p_eval = program.train_step, program.eval_step

    with sharding_context(device_mesh, rules):
        ckpt = Checkpointer(run.model_dir, checkpoint)
        state = restore_or_initialize(ckpt, program.abstract, lambda: initialize(
            program.make_model, program.tx, shardings, run.seed))
        start = int(state.step)
        write_gin_config(run.model_dir, gin.operative_config_str())
        logger = _logger(run, model, data, start)
        batches = host_batches(data, split=data.train_split, shuffle=data.shuffle, start_batch=start)

        def evaluate(state, step):
            logger.write_eval(step, evaluate_batches(p_eval, state, data, device_mesh, rules,
                                                     run.eval_batches, step_cfg))

        return run_steps(lambda _: p_train, state,
                         (global_batch(b, device_mesh, rules) for b in batches),
                         run=run, checkpoint=checkpoint, ckpt=ckpt, logger=logger,
                         task_name=data.mixture_or_task_name, evaluate=evaluate)


def restore_or_initialize(ckpt: Checkpointer, abstract: TrainState, init: Callable[[], TrainState]):
    """The newest checkpoint restored onto `abstract`'s shardings, else `init()`."""
    latest = ckpt.latest_step()
    if latest is None:
        return init()
    state, data_pos = ckpt.restore(latest, abstract)
    log.info("resumed from step %d (input position %s)", latest, data_pos)
    return state


def run_steps(step_at: Callable[[int], Callable], state, batches, *, run: RunConfig,
              checkpoint: CheckpointConfig, ckpt: Checkpointer, logger, task_name: str,
              evaluate: Callable[[Any, int], None] | None = None) -> dict[str, float]:
    """The training loop shared by every trainer: steps from state.step to run.train_steps
    on global batches, step i running the jitted `step_at(i)(state, batch)` (one program
    for the LM; the codec switches programs when its discriminators join); metrics every
    log_every, `evaluate(state, step)` every eval_every, a checkpoint (with the input
    position) every save_every and at the end, and a stop once run.max_nonfinite_streak
    updates in a row were skipped. Closes ckpt and logger."""
    start = int(state.step)
    last: dict[str, float] = {}
    prev_metrics = None
    try:
        for step in range(start, run.train_steps):
            state, metrics = step_at(step)(state, next(batches))
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
        ckpt.close()
        logger.close()
    return last


def _logger(run: RunConfig, model: LMConfig, data: DataConfig, start: int):
    from mufm.train.metrics import MetricsLogger

    tokens = data.batch_size * data.sequence_length
    return MetricsLogger(run.model_dir, total_steps=run.train_steps, start_step=start,
                         units_per_step={"tokens": tokens},
                         flops_per_step=tokens * train_flops_per_token(model, data.sequence_length))


def _check_nonfinite(metrics, limit: int, step: int) -> None:
    streak = int(metrics["nonfinite_streak"])
    if streak >= limit:
        raise NonFiniteLossError(
            f"{streak} consecutive steps (up to step {step}) had a non-finite loss or gradient; "
            f"their updates were skipped and the last checkpoint holds the last good state. "
            f"Lower the learning rate, enable z_loss or check the data.")


def evaluate_batches(p_eval, state, data: DataConfig, mesh, rules, num_batches: int,
                     step_cfg: StepConfig) -> dict[str, float]:
    """Token-weighted loss/accuracy over the first `num_batches` of the eval split."""
    totals = None
    it = host_batches(data, split=data.eval_split, shuffle=False)
    for _ in range(num_batches):
        try:
            host = next(it)
        except StopIteration:
            break
        stats = p_eval(state, global_batch(host, mesh, rules))
        totals = stats if totals is None else jax.tree.map(np.add, totals, stats)
    if totals is None:
        return {}
    out = summarize(jax.device_get(totals), step_cfg.stream_names)
    out.pop("tokens", None)
    return {k: float(v) for k, v in out.items()}
