"""`MuLanTask`: the MuLan towers on the shared trainer's task protocol.

    python -m mufm.train --gin_file=experiments/mulan_corpus_cpu.gin \
        --gin.MODEL_DIR=\"runs/mulan_cpu\" --gin.CORPUS_DIR=\"$HOME/.cache/mufm/corpus_medium\"

Batches: random `window_seconds` crops of the corpus's clips (the corpus task with
`crop_seconds` = the tower's window; held-out splits take the centre crop) with their
captions, through `host_captioned_audio_batches`; on the host each caption is augmented
(mufm/mulan/augment.py, seeded by (seed, step, row)) and tokenised to exactly
`caption_tokens` ids (default 64: `[CLS]` + the first 62 word pieces + `[SEP]`; the corpus's
captions average ~31 word pieces, so only unusually long ones lose their tail).

One train step: symmetric InfoNCE over the global batch (mufm/mulan/losses.py) and one
optimizer update. With `TextTowerConfig.frozen` the MiniLM encoder is not differentiated
and `optax.multi_transform` gives it `set_to_zero` (no Adam moments are kept for it);
everything else (the audio tower, the text projection, the temperature) trains.

The pretrained MiniLM weights enter through `pretrained_params`: the trainer builds the
state from shapes, then places the file's arrays into the encoder's shardings. The scratch
text tower (`TextTowerConfig.kind='scratch'`) has none; its sentencepiece model is fitted
on the train split's captions into `<model_dir>/text_tokenizer/spm.model` the first time the
task tokenizes (the first training batch) and read from there on resume (mufm/mulan/spm.py).

Evaluation (`evaluate`, every `eval_every` steps): the eval program gives the embeddings of
`eval_batches` batches of the eval split (captions unaugmented), and the figures are
computed over all of them at once: the loss at the current temperature and retrieval
R@1 / R@5 both ways among those clips (the in-batch figures of training, over a larger
pool). Metrics: loss, audio_to_text_loss / text_to_audio_loss, audio_to_text_accuracy /
text_to_audio_accuracy (in-batch R@1), temperature, grad_norm, learning_rate.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Iterator, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mufm.audio import SAMPLE_RATE
from mufm.data.pipeline import DataConfig, host_batch_size, host_captioned_audio_batches
from mufm.gin_flags import GinConfigError
from mufm.parallel.multihost import aligned_batches, real_rows
from mufm.mulan.augment import CaptionAugmentConfig, augment_batch
from mufm.mulan.model import FROZEN, TRAIN, MuLanConfig, MuLanModel, frozen_labels, train_flops
from mufm.mulan.tokenizer import tokenize
from mufm.train.optim import OptimizerConfig, make_optimizer
from mufm.train.state import ModelSpec, TrainState, merge_model
from mufm.train.task import Evaluation, Optimizers, StepContext, Task

log = logging.getLogger(__name__)


def split_params(params, labels):
    """(trainable, frozen): two trees of `params`' structure, None where the other holds
    the leaf (None is an empty subtree to jax, so `grad` sees only the trainable leaves)."""
    pick = lambda want: jax.tree.map(lambda p, l: p if l == want else None, params, labels)
    return pick(TRAIN), pick(FROZEN)


def join_params(trainable, frozen):
    return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen,
                        is_leaf=lambda x: x is None)


def mulan_train_step(state: TrainState, batch: dict, *, spec: ModelSpec,
                     tx: optax.GradientTransformation, schedule: optax.Schedule,
                     cfg: MuLanConfig, seed: int) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    labels = frozen_labels(cfg, state.params)
    trainable, frozen = split_params(state.params, labels)

    def objective(trainable):
        model = merge_model(spec, join_params(trainable, frozen), state.model_state)
        return model(batch, key=key)

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    grad_norm = optax.tree.norm(grads)
    # The frozen leaves' "gradients" are zeros: multi_transform hands them to set_to_zero.
    full_grads = join_params(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, new_opt = tx.update(full_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.advance(ok, params=new_params, opt_state=new_opt)
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   nonfinite_skipped=new_state.nonfinite_skipped,
                   nonfinite_streak=new_state.nonfinite_streak)
    metrics.pop("examples")
    return new_state, metrics


def mulan_embed_step(state: TrainState, batch: dict, *, spec: ModelSpec) -> dict:
    """The eval program: unit audio and text embeddings [B, D] and the logit scale."""
    model = merge_model(spec, state.params, state.model_state)
    return {"audio": model.embed_audio(batch["waveform"], batch["waveform_length"]),
            "text": model.embed_text(batch["text_ids"], batch["text_mask"]),
            "scale": model.scale()}


def retrieval_figures(audio: np.ndarray, text: np.ndarray, scale: float) -> dict[str, float]:
    """Loss and R@1 / R@5 both ways of N matching pairs (row i of each), in float64."""
    from mufm.mulan.evaluate import ranks

    a, t = audio.astype(np.float64), text.astype(np.float64)
    logits = scale * a @ t.T
    lse = lambda x, ax: np.log(np.sum(np.exp(x - x.max(ax, keepdims=True)), ax)) + x.max(ax)
    diag = np.diagonal(logits)
    out = {"audio_to_text_loss": float(np.mean(lse(logits, 1) - diag)),
           "text_to_audio_loss": float(np.mean(lse(logits, 0) - diag))}
    out["loss"] = 0.5 * (out["audio_to_text_loss"] + out["text_to_audio_loss"])
    for name, r in (("audio_to_text", ranks(logits)), ("text_to_audio", ranks(logits.T))):
        out[f"{name}_r1"] = float(np.mean(r < 1))
        out[f"{name}_r5"] = float(np.mean(r < 5))
    out["candidates"] = float(len(a))
    out["temperature"] = 1.0 / scale
    return out


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MuLanTask(Task):
    model: MuLanConfig = gin.REQUIRED
    data: DataConfig = gin.REQUIRED
    optimizer: OptimizerConfig = gin.REQUIRED
    augment: CaptionAugmentConfig = CaptionAugmentConfig()
    caption_tokens: int = 64  # ids per caption, [CLS] and [SEP] included; longer ones truncated
    # The run's MODEL_DIR (`MuLanTask.model_dir = %MODEL_DIR`, bound by the scratch model
    # configs): where the scratch text tower's sentencepiece model is fitted and found
    # (mufm/mulan/spm.py). Must equal RunConfig.model_dir with kind='scratch'; unused by
    # MiniLM. Not part of model_configs(): a trained run finds the model in its own dir.
    model_dir: str = ""

    family = "mulan"
    progress_metrics = ("loss", "audio_to_text_accuracy", "text_to_audio_accuracy", "temperature")

    def validate(self, run) -> None:
        a = self.model.audio
        if a.sample_rate != SAMPLE_RATE:
            raise GinConfigError(f"AudioTowerConfig.sample_rate={a.sample_rate}: the audio tasks "
                                 f"give {SAMPLE_RATE} Hz")
        if self.data.sequence_length != a.window_samples:
            raise GinConfigError(f"DataConfig.sequence_length={self.data.sequence_length} must be "
                                 f"the audio tower's window, {a.window_samples} samples "
                                 f"({a.window_seconds} s)")
        if self.data.batch_size < 2:
            raise GinConfigError("MuLanTask needs DataConfig.batch_size >= 2: the other examples "
                                 "of the batch are the negatives")
        if self.optimizer.grad_accum_steps != 1:
            # Micro-batches would shrink the negatives to one slice each.
            raise GinConfigError(f"MuLanTask.optimizer.grad_accum_steps="
                                 f"{self.optimizer.grad_accum_steps} is not supported")
        text = self.model.text
        limit = f"{'ScratchTextConfig' if text.kind == 'scratch' else 'MiniLMConfig'}.max_length"
        if not 2 < self.caption_tokens <= text.max_length:
            raise GinConfigError(f"MuLanTask.caption_tokens={self.caption_tokens} must lie in "
                                 f"(2, {limit}={text.max_length}]")
        if text.kind == "scratch":
            if not self.model_dir:
                raise GinConfigError("TextTowerConfig.kind='scratch' fits its sentencepiece model "
                                     "into the run: bind MuLanTask.model_dir = %MODEL_DIR")
            if os.path.abspath(self.model_dir) != os.path.abspath(run.model_dir):
                raise GinConfigError(f"MuLanTask.model_dir={self.model_dir!r} is not the run's "
                                     f"RunConfig.model_dir={run.model_dir!r}: bind "
                                     "MuLanTask.model_dir = %MODEL_DIR")

    def make_model(self, rngs):
        return MuLanModel(self.model, rngs=rngs)

    def make_optimizer(self, train_steps: int) -> Optimizers:
        inner, schedule = make_optimizer(self.optimizer, train_steps)
        tx = optax.multi_transform({TRAIN: inner, FROZEN: optax.set_to_zero()},
                                   functools.partial(frozen_labels, self.model))
        return Optimizers(tx=tx, schedules={"": schedule})

    def pretrained_params(self) -> Mapping[tuple[str, ...], np.ndarray]:
        text = self.model.text
        if text.kind != "minilm" or not text.pretrained:
            return {}
        from flax import nnx

        from mufm.mulan.text import MiniLM, minilm_arrays

        encoder = nnx.eval_shape(lambda: MiniLM(text.minilm, rngs=nnx.Rngs(0)))
        return {("text", "encoder") + tuple(str(k) for k in path): value
                for path, value in minilm_arrays(encoder).items()}

    def train_steps(self, ctx: StepContext):
        return {"train": functools.partial(
            mulan_train_step, spec=ctx.spec, tx=ctx.optimizers.tx,
            schedule=ctx.optimizers.schedules[""], cfg=self.model, seed=ctx.seed)}

    def eval_programs(self, ctx: StepContext):
        return {"embed": functools.partial(mulan_embed_step, spec=ctx.spec)}

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        b, n, L = self.data.batch_size, self.data.sequence_length, self.caption_tokens
        return {"waveform": jax.ShapeDtypeStruct((b, n), np.float32),
                "waveform_length": jax.ShapeDtypeStruct((b,), np.int32),
                "text_ids": jax.ShapeDtypeStruct((b, L), np.int32),
                "text_mask": jax.ShapeDtypeStruct((b, L), np.int32)}

    def train_captions(self) -> list[str]:
        """The captions of the whole train split (every input shard, whatever this host
        reads), unshuffled, at most `ScratchTextConfig.max_fit_captions`: what the scratch
        tower's sentencepiece model is fitted on. Reads the split once, audio included."""
        from mufm.data.pipeline import _task

        limit = self.model.text.scratch.max_fit_captions
        ds = _task(self.data).get_dataset({"waveform": self.data.sequence_length},
                                          split=self.data.train_split, shuffle=False,
                                          num_epochs=1, seed=self.data.seed, use_cached=False)
        ds = ds.map(lambda ex: ex["caption"]).take(limit)
        captions = [c.decode("utf-8") for c in ds.as_numpy_iterator()]
        log.info("read %d train captions to fit the text tokenizer", len(captions))
        return captions

    def tokenizer_kwargs(self) -> dict:
        """`tokenize`'s arguments for this task's text tower. Scratch: the run's
        sentencepiece model, fitted on `train_captions()` the first time (a fresh run) and
        read from MODEL_DIR afterwards (a resumed run, every later call)."""
        text = self.model.text
        if text.kind == "scratch":
            if not self.model_dir:
                raise GinConfigError("the scratch text tower needs MuLanTask.model_dir "
                                     "(= %MODEL_DIR) to find its sentencepiece model")
            from mufm.mulan import spm

            spm.ensure(self.model_dir, text.scratch, self.train_captions)
        return text.tokenizer_kwargs(self.model_dir)

    def tokenize(self, captions) -> tuple[np.ndarray, np.ndarray]:
        return tokenize(list(captions), length=self.caption_tokens, **self.tokenizer_kwargs())

    def text_batch(self, host: dict, *, step: int | None) -> dict[str, np.ndarray]:
        """A host batch with `text_ids` / `text_mask`; `step` None: captions as they are."""
        captions = [c.decode("utf-8") for c in host["caption"]]
        if step is not None:
            rows = len(captions)
            captions = augment_batch(captions, host["attributes_json"], self.augment,
                                     seed=self.data.seed, step=step,
                                     first_row=jax.process_index() * rows)
        ids, mask = self.tokenize(captions)
        return {"waveform": host["waveform"], "waveform_length": host["waveform_length"],
                "text_ids": ids, "text_mask": mask}

    def train_batches(self, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
        it = host_captioned_audio_batches(self.data, split=self.data.train_split,
                                          shuffle=self.data.shuffle, start_batch=start_batch)
        for step, host in enumerate(it, start_batch):
            yield self.text_batch(host, step=step)

    def units_per_step(self) -> dict[str, float]:
        return {"audio_s": self.data.batch_size * self.data.sequence_length / SAMPLE_RATE}

    def flops_per_step(self) -> float:
        return train_flops(self.model, self.data.batch_size, self.data.sequence_length,
                           self.caption_tokens)

    def evaluate(self, program, state, num_batches: int) -> Evaluation:
        """Retrieval over the embeddings of the first `num_batches` eval batches (a short
        last batch is padded with silent rows that are dropped again before scoring)."""
        from jax.experimental import multihost_utils

        it = host_captioned_audio_batches(self.data, split=self.data.eval_split, shuffle=False,
                                          num_epochs=1, drop_remainder=False)
        rows, crop = host_batch_size(self.data.batch_size), self.data.sequence_length
        # A host whose shard ran out while others go on takes part with one silent, captionless
        # placeholder row (repeated as padding like any short batch's last row, never scored).
        placeholder = {"waveform": np.zeros((1, crop), np.float32),
                       "waveform_length": np.zeros((1,), np.int32), "caption": np.array([b""]),
                       "attributes_json": np.array([b"{}"]), "clip_id": np.array([b""])}
        audio, text, scale = [], [], 1.0
        for host in aligned_batches(it, num_batches, lambda: placeholder):
            batch = self.text_batch(host, step=None)
            k = 0 if host is placeholder else len(batch["waveform_length"])
            n = len(batch["waveform_length"])
            padded = {name: np.concatenate([v, np.repeat(v[-1:], rows - n, 0)]) if n < rows else v
                      for name, v in batch.items()}
            out = program.evals["embed"](state, program.global_batch(padded))
            scale = float(jax.device_get(out["scale"]))  # replicated
            emb = multihost_utils.process_allgather({"a": out["audio"], "t": out["text"]},
                                                    tiled=True)
            # Every host's real rows (their counts differ at the end of uneven shards).
            keep = real_rows(program.batch_shardings["waveform_length"], len(emb["a"]), k)
            audio.append(np.asarray(emb["a"])[keep])
            text.append(np.asarray(emb["t"])[keep])
        if not audio or sum(len(a) for a in audio) < 2:
            log.warning("evaluation split %r of %s has fewer than 2 clips", self.data.eval_split,
                        self.data.mixture_or_task_name)
            return Evaluation(scalars={})
        return Evaluation(scalars=retrieval_figures(np.concatenate(audio), np.concatenate(text),
                                                    scale))

    def model_configs(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "caption_tokens": self.caption_tokens}

    @classmethod
    def inference_model(cls, configs: Mapping[str, Any], rngs) -> MuLanModel:
        return MuLanModel(configs["model"], rngs=rngs)
