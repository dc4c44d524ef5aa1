"""`SemanticTask`: the w2v-BERT-like model on the shared trainer's task protocol.

    python -m mufm.train --gin_file=experiments/semantic_synthetic_tiny.gin \
        --gin.MODEL_DIR=\"runs/semantic_syn\"

Waveform crops come from an audio seqio task through `host_audio_batches`, as for the
codec. One train step: the model's loss (contrastive + diversity + MLM, `model.py`) and
one optimizer update. The masks, distractors, Gumbel noise and dropout all derive from
fold_in(seed, step), and the Gumbel temperature from the step, so a resumed run takes the
steps an uninterrupted one would. One eval program: the same losses and accuracies with
noise-free quantizer choices and no dropout, under fixed masks (`EVAL_KEY`).

Metrics: loss, contrastive_loss / contrastive_accuracy (InfoNCE over masked frames),
mlm_loss / mlm_accuracy (quantizer ids at masked frames), diversity_loss,
codebook_perplexity (exp of the entropy of the chosen codes' frequencies in the batch,
mean over groups), prob_perplexity (of the mean softmax), masked_fraction, grad_norm,
learning_rate, gumbel_temperature.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Iterator, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mufm.audio import SAMPLE_RATE
from mufm.data.pipeline import DataConfig, host_audio_batches, host_batch_size
from mufm.gin_flags import GinConfigError
from mufm.parallel.multihost import aligned_batches
from mufm.semantic.model import SemanticConfig, SemanticModel, gumbel_temperature, train_flops
from mufm.train.optim import OptimizerConfig, make_optimizer
from mufm.train.state import ModelSpec, TrainState, merge_model
from mufm.train.task import Evaluation, Optimizers, StepContext, Task

log = logging.getLogger(__name__)

# The eval masks and distractors: one fixed draw, so two evaluations of a state agree.
EVAL_KEY = 0x5e_3a_17
# Eval figures averaged over masked frames (weighted by each batch's masked frames); the
# others (codebook figures, masked fraction) are plain means over batches.
PER_MASKED_FRAME = ("loss", "contrastive_loss", "contrastive_accuracy", "mlm_loss", "mlm_accuracy")


def semantic_train_step(state: TrainState, batch: dict, *, spec: ModelSpec,
                        tx: optax.GradientTransformation, schedule: optax.Schedule,
                        cfg: SemanticConfig, seed: int) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    temperature = gumbel_temperature(cfg, state.step)

    def objective(params):
        model = merge_model(spec, params, state.model_state)
        return model(batch["waveform"], batch["waveform_length"], key=key, train=True,
                     temperature=temperature)

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.advance(ok, params=new_params, opt_state=new_opt)
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   gumbel_temperature=temperature, nonfinite_skipped=new_state.nonfinite_skipped,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics


def semantic_eval_step(state: TrainState, batch: dict, *, spec: ModelSpec, seed: int) -> dict:
    model = merge_model(spec, state.params, state.model_state)
    key = jax.random.fold_in(jax.random.key(seed), EVAL_KEY)
    _, metrics = model(batch["waveform"], batch["waveform_length"], key=key, train=False)
    return metrics


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SemanticTask(Task):
    model: SemanticConfig = gin.REQUIRED
    data: DataConfig = gin.REQUIRED
    optimizer: OptimizerConfig = gin.REQUIRED

    family = "semantic"
    progress_metrics = ("loss", "contrastive_accuracy", "mlm_accuracy", "codebook_perplexity")

    def validate(self, run) -> None:
        cfg, n = self.model, self.data.sequence_length
        if cfg.sample_rate != SAMPLE_RATE:
            raise GinConfigError(f"SemanticConfig.sample_rate={cfg.sample_rate}: the audio tasks "
                                 f"give {SAMPLE_RATE} Hz")
        if n % cfg.hop or n // cfg.hop < 2:
            raise GinConfigError(f"DataConfig.sequence_length={n} (crop samples) must be a "
                                 f"multiple of the model's hop {cfg.hop} and at least 2 frames")
        if self.optimizer.grad_accum_steps != 1:
            # The losses normalise by the masked frames of the whole batch, not per slice.
            raise GinConfigError(f"SemanticTask.optimizer.grad_accum_steps="
                                 f"{self.optimizer.grad_accum_steps} is not supported")

    def make_model(self, rngs):
        return SemanticModel(self.model, rngs=rngs)

    def make_optimizer(self, train_steps: int) -> Optimizers:
        tx, schedule = make_optimizer(self.optimizer, train_steps)
        return Optimizers(tx=tx, schedules={"": schedule})

    def train_steps(self, ctx: StepContext):
        return {"train": functools.partial(
            semantic_train_step, spec=ctx.spec, tx=ctx.optimizers.tx,
            schedule=ctx.optimizers.schedules[""], cfg=self.model, seed=ctx.seed)}

    def eval_programs(self, ctx: StepContext):
        return {"eval": functools.partial(semantic_eval_step, spec=ctx.spec, seed=ctx.seed)}

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        b, n = self.data.batch_size, self.data.sequence_length
        return {"waveform": jax.ShapeDtypeStruct((b, n), np.float32),
                "waveform_length": jax.ShapeDtypeStruct((b,), np.int32)}

    def train_batches(self, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
        return host_audio_batches(self.data, split=self.data.train_split,
                                  shuffle=self.data.shuffle, start_batch=start_batch)

    def units_per_step(self) -> dict[str, float]:
        return {"audio_s": self.data.batch_size * self.data.sequence_length / self.model.sample_rate}

    def flops_per_step(self) -> float:
        return train_flops(self.model, self.data.batch_size, self.data.sequence_length)

    def evaluate(self, program, state, num_batches: int) -> Evaluation:
        """The eval program's figures over the first `num_batches` batches of the eval split
        (a short last batch is padded with rows of length 0, which hold no valid frame)."""
        sums: dict[str, float] = {}
        frames = batches = 0.0
        it = host_audio_batches(self.data, split=self.data.eval_split, shuffle=False, num_epochs=1,
                                drop_remainder=False)
        rows, crop = host_batch_size(self.data.batch_size), self.data.sequence_length
        empty = lambda: {"waveform": np.zeros((0, crop), np.float32),
                         "waveform_length": np.zeros((0,), np.int32)}
        # As many batches on every host (uneven shards must not leave one waiting); a host
        # with none left takes part with rows of length 0, which hold no valid frame.
        for host in aligned_batches(it, num_batches, empty):
            k = len(host["waveform_length"])
            wave = np.zeros((rows, crop), np.float32)
            lengths = np.zeros((rows,), np.int32)
            wave[:k], lengths[:k] = host["waveform"], host["waveform_length"]
            out = jax.device_get(program.evals["eval"](
                state, program.global_batch({"waveform": wave, "waveform_length": lengths})))
            weight = float(out["masked_frames"])
            for name, value in out.items():
                if name == "masked_frames":
                    continue
                scale = weight if name in PER_MASKED_FRAME else 1.0
                sums[name] = sums.get(name, 0.0) + scale * float(value)
            frames += weight
            batches += 1
        if not batches:
            log.warning("evaluation split %r of %s is empty", self.data.eval_split,
                        self.data.mixture_or_task_name)
            return Evaluation(scalars={})
        return Evaluation(scalars={
            name: total / (max(frames, 1.0) if name in PER_MASKED_FRAME else batches)
            for name, total in sums.items()})

    def model_configs(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data}

    @classmethod
    def inference_model(cls, configs: Mapping[str, Any], rngs) -> SemanticModel:
        return SemanticModel(configs["model"], rngs=rngs)
