"""`train()`: the one gin-configurable entry function for training, top to bottom.

mesh -> abstract state from shapes -> restore the newest checkpoint or initialise in
place -> deterministic input positioned at the restored step -> jitted, donated step with
explicit shardings -> metrics, evaluation and async checkpoints -> final save.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os

import gin
import jax
import numpy as np

from mufm.data.pipeline import DataConfig, host_batches
from mufm.models.lm import LMConfig, StageLM, train_flops_per_token
from mufm.parallel.logical import sharding_context
from mufm.parallel.mesh import MeshConfig, build_mesh
from mufm.parallel.multihost import batch_sharding, global_batch, maybe_initialize_distributed
from mufm.train.checkpoint import CheckpointConfig, Checkpointer, write_gin_config
from mufm.train.optim import OptimizerConfig, make_optimizer
from mufm.train.state import abstract_state, init_fn
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


@gin.configurable
def train(model: LMConfig = gin.REQUIRED, data: DataConfig = gin.REQUIRED,
          optimizer: OptimizerConfig = gin.REQUIRED, checkpoint: CheckpointConfig = gin.REQUIRED,
          mesh: MeshConfig = gin.REQUIRED, run: RunConfig = gin.REQUIRED) -> dict[str, float]:
    """Trains a stage LM; returns the last logged metrics."""
    maybe_initialize_distributed()
    device_mesh = build_mesh(mesh)  # fails here, before any compute, if it does not fit
    rules = mesh.rules
    tx, schedule = make_optimizer(optimizer, run.train_steps)
    make_model = make_model_fn(model)
    step_cfg = StepConfig(grad_accum_steps=optimizer.grad_accum_steps, z_loss=run.z_loss,
                          stream_names=tuple(data.stream_names), seed=run.seed)

    with sharding_context(device_mesh, rules):
        abstract, shardings, spec = abstract_state(make_model, tx, device_mesh, rules, run.seed)
        ckpt = Checkpointer(run.model_dir, checkpoint)
        latest = ckpt.latest_step()
        if latest is not None:
            state, data_pos = ckpt.restore(latest, abstract)
            log.info("resumed from step %d (input position %s)", latest, data_pos)
        else:
            state = jax.jit(init_fn(make_model, tx), out_shardings=shardings)(jax.random.key(run.seed))
        start = int(state.step)
        write_gin_config(run.model_dir, gin.operative_config_str())

        batch_sh = batch_sharding(device_mesh, rules, 2)
        p_train = jax.jit(functools.partial(train_step, spec=spec, tx=tx, schedule=schedule, cfg=step_cfg),
                          in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                          donate_argnums=(0,))
        p_eval = jax.jit(functools.partial(eval_step, spec=spec, cfg=step_cfg),
                         in_shardings=(shardings, batch_sh))

        logger = _logger(run, model, data, start)
        batches = host_batches(data, split=data.train_split, shuffle=data.shuffle, start_batch=start)
        last: dict[str, float] = {}
        prev_metrics = None
        try:
            for step in range(start, run.train_steps):
                batch = global_batch(next(batches), device_mesh, rules)
                state, metrics = p_train(state, batch)
                logger.add(metrics)
                # Check the previous step's streak: it is already computed, so this does not
                # stall the dispatch of the step just queued.
                if prev_metrics is not None:
                    _check_nonfinite(prev_metrics, run.max_nonfinite_streak, step)
                prev_metrics = metrics
                done = step + 1
                if done % run.log_every == 0 or done == run.train_steps:
                    last = logger.flush(done)
                if run.eval_every and (done % run.eval_every == 0 or done == run.train_steps):
                    logger.write_eval(done, evaluate_batches(p_eval, state, data, device_mesh, rules,
                                                             run.eval_batches, step_cfg))
                if done % checkpoint.save_every == 0 or done == run.train_steps:
                    ckpt.save(done, state, {"batches": done, "task": data.mixture_or_task_name},
                              force=True)
            if prev_metrics is not None:
                _check_nonfinite(prev_metrics, run.max_nonfinite_streak, run.train_steps)
        finally:
            ckpt.close()
            logger.close()
    return last


def _logger(run: RunConfig, model: LMConfig, data: DataConfig, start: int):
    from mufm.train.metrics import MetricsLogger

    return MetricsLogger(run.model_dir, total_steps=run.train_steps, start_step=start,
                         tokens_per_batch=data.batch_size * data.sequence_length,
                         flops_per_token=train_flops_per_token(model, data.sequence_length))


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
