"""`LMTask`: the stage transformer trained on a seqio token task (the shared trainer's
protocol, `mufm.train.task`).

    python -m mufm.train --gin_file=experiments/synthetic_tiny.gin --gin.MODEL_DIR=\"runs/tiny\"

One jitted step (cross-entropy on packed sequences, optional z-loss, gradient accumulation
over micro-batches) and one eval program (token-weighted loss and accuracy, per stream when
the task marks streams).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Mapping

import gin
import jax
import numpy as np

from mufm.data.pipeline import DataConfig, batch_feature_names, host_batches
from mufm.gin_flags import GinConfigError
from mufm.lm.model import LMConfig, StageLM, train_flops_per_token
from mufm.lm.step import StepConfig, eval_step, summarize, train_step
from mufm.train.optim import OptimizerConfig, make_optimizer
from mufm.train.task import Evaluation, Optimizers, StepContext, Task


def stage_layout(data) -> Any:
    """The StageLayout of the first stage token task a DataConfig registers (None if none,
    or no config): what a stage run's recorded configs say its sequences look like."""
    regs = getattr(data, "registrations", ())
    return next((r.layout for r in regs if hasattr(r, "layout")), None)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LMTask(Task):
    model: LMConfig = gin.REQUIRED
    data: DataConfig = gin.REQUIRED
    optimizer: OptimizerConfig = gin.REQUIRED
    z_loss: float = 0.0  # PaLM's log(Z)^2 penalty, keeps logits from drifting in bf16

    family = "lm"

    def layout(self):
        """The stage layout of the token task this trains on (None for other tasks)."""
        return stage_layout(self.data)

    def validate(self, run) -> None:
        layout = self.layout()
        if layout is None:
            return
        if self.model.vocab_size < layout.vocab_size:
            raise GinConfigError(f"LMConfig.vocab_size={self.model.vocab_size} is smaller than the "
                                 f"{layout.name!r} stage's id space, {layout.vocab_size} ids")
        if self.data.sequence_length < layout.max_length:
            raise GinConfigError(f"DataConfig.sequence_length={self.data.sequence_length} is shorter "
                                 f"than one {layout.name!r} sequence, {layout.max_length} tokens")

    def _step_cfg(self, seed: int) -> StepConfig:
        return StepConfig(grad_accum_steps=self.optimizer.grad_accum_steps, z_loss=self.z_loss,
                          stream_names=tuple(self.data.stream_names), seed=seed)

    def make_model(self, rngs):
        return StageLM(self.model, rngs=rngs)

    def make_optimizer(self, train_steps: int) -> Optimizers:
        tx, schedule = make_optimizer(self.optimizer, train_steps)
        return Optimizers(tx=tx, schedules={"": schedule})

    def train_steps(self, ctx: StepContext):
        return {"train": functools.partial(
            train_step, spec=ctx.spec, tx=ctx.optimizers.tx,
            schedule=ctx.optimizers.schedules[""], cfg=self._step_cfg(ctx.seed))}

    def eval_programs(self, ctx: StepContext):
        return {"eval": functools.partial(eval_step, spec=ctx.spec, cfg=self._step_cfg(ctx.seed))}

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (self.data.batch_size, self.data.sequence_length)
        return {name: jax.ShapeDtypeStruct(shape, np.int32)
                for name in batch_feature_names(self.data)}

    def check_data(self) -> None:
        """The token task's tokens exist and fit its layout: a clear error before the first
        batch (not in `validate`, so a compile check needs no tokens)."""
        for registration in self.data.registrations:
            if hasattr(registration, "check"):
                try:
                    registration.check()
                except (ValueError, FileNotFoundError) as e:
                    raise GinConfigError(str(e)) from None

    def train_batches(self, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
        self.check_data()
        return host_batches(self.data, split=self.data.train_split, shuffle=self.data.shuffle,
                            start_batch=start_batch)

    def units_per_step(self) -> dict[str, float]:
        return {"tokens": self.data.batch_size * self.data.sequence_length}

    def flops_per_step(self) -> float:
        tokens = self.data.batch_size * self.data.sequence_length
        return tokens * train_flops_per_token(self.model, self.data.sequence_length)

    def evaluate(self, program, state, num_batches: int) -> Evaluation:
        """Token-weighted loss/accuracy over the first `num_batches` of the eval split."""
        totals = None
        it = host_batches(self.data, split=self.data.eval_split, shuffle=False)
        for _ in range(num_batches):
            host = next(it, None)
            if host is None:
                break
            stats = program.evals["eval"](state, program.global_batch(host))
            totals = stats if totals is None else jax.tree.map(np.add, totals, stats)
        if totals is None:
            return Evaluation(scalars={})
        out = summarize(jax.device_get(totals), tuple(self.data.stream_names))
        out.pop("tokens", None)
        return Evaluation(scalars={k: float(v) for k, v in out.items()})

    def model_configs(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data}

    @classmethod
    def inference_model(cls, configs: Mapping[str, Any], rngs) -> StageLM:
        return StageLM(configs["model"], rngs=rngs)
