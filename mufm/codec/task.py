"""`CodecTask`: the codec GAN on the shared trainer's task protocol (`mufm.train.task`).

    python -m mufm.train --gin_file=experiments/codec_corpus_cpu.gin --gin.MODEL_DIR=\"runs/codec\"

The model is `CodecGAN` (generator + discriminators in one module), so one TrainState built
from shapes carries both players' parameters, one optimizer state per player
(`optim.per_group`) and the codebook EMA state, sharded by the same logical rules and
checkpointed (with the input position) by the same orbax code. Two train steps: `warmup`
(reconstruction only, before `GANConfig.discriminator_start`) and `train` (both players);
one eval program per evaluated RVQ level count. Evaluation: SI-SNR and multi-scale mel
distance of held-out crops at each of `GANConfig.eval_levels`, with audio summaries.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Iterator, Mapping

import gin
import jax
import numpy as np
from flax import nnx

from mufm.codec.discriminators import DiscriminatorConfig
from mufm.codec.gan import GROUPS, CodecGAN
from mufm.codec.losses import CodecLossConfig
from mufm.codec.model import Codec, CodecConfig
from mufm.codec.step import GANConfig, gan_train_step, reconstruct
from mufm.data.pipeline import DataConfig, host_audio_batches, host_batch_size
from mufm.eval.audio_metrics import mel_distance, si_snr
from mufm.gin_flags import GinConfigError
from mufm.parallel.multihost import aligned_batches, host_local, process_sum
from mufm.train.optim import OptimizerConfig, make_optimizer, per_group
from mufm.train.task import Evaluation, Optimizers, StepContext, Task

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CodecTask(Task):
    codec: CodecConfig = gin.REQUIRED
    discriminator: DiscriminatorConfig = gin.REQUIRED
    losses: CodecLossConfig = gin.REQUIRED
    gan: GANConfig = gin.REQUIRED
    data: DataConfig = gin.REQUIRED
    generator_optimizer: OptimizerConfig = gin.REQUIRED
    discriminator_optimizer: OptimizerConfig = gin.REQUIRED

    family = "codec"
    inference_path = "generator"
    progress_metrics = ("mel", "discriminator_loss", "codebook/restarts_total")

    def validate(self, run) -> None:
        if self.losses.sample_rate != self.codec.sample_rate:
            raise GinConfigError(f"CodecLossConfig.sample_rate={self.losses.sample_rate} differs "
                                 f"from CodecConfig.sample_rate={self.codec.sample_rate}")
        if self.data.sequence_length % self.codec.hop:
            raise GinConfigError(f"DataConfig.sequence_length={self.data.sequence_length} (crop "
                                 f"samples) is not a multiple of the codec hop {self.codec.hop}")
        for name in ("generator_optimizer", "discriminator_optimizer"):
            if getattr(self, name).grad_accum_steps != 1:
                # Micro-batches would each update the codebook EMA and see a different
                # discriminator state: not the same step, so not offered.
                raise GinConfigError(f"CodecTask.{name}: grad_accum_steps="
                                     f"{getattr(self, name).grad_accum_steps} is not supported by "
                                     f"the codec GAN step (use a smaller batch or more steps)")
        too_deep = [q for q in self.gan.eval_levels if not 1 <= q <= self.codec.num_levels]
        if too_deep:
            raise GinConfigError(f"GANConfig.eval_levels {too_deep} outside 1..{self.codec.num_levels}")

    def make_model(self, rngs):
        return CodecGAN(self.codec, self.discriminator, rngs=rngs)

    def make_optimizer(self, train_steps: int) -> Optimizers:
        made = {"generator": make_optimizer(self.generator_optimizer, train_steps),
                "discriminator": make_optimizer(self.discriminator_optimizer, train_steps)}
        return Optimizers(tx=per_group({k: made[k][0] for k in GROUPS}),
                          schedules={k: made[k][1] for k in GROUPS})

    def train_steps(self, ctx: StepContext):
        step = functools.partial(gan_train_step, spec=ctx.spec, tx=ctx.optimizers.tx,
                                 schedules=ctx.optimizers.schedules, losses=self.losses,
                                 cfg=self.gan, seed=ctx.seed)
        return {"warmup": functools.partial(step, adversarial=False),
                "train": functools.partial(step, adversarial=True)}

    def step_name(self, step: int) -> str:
        return "train" if step >= self.gan.discriminator_start else "warmup"

    def eval_programs(self, ctx: StepContext):
        return {f"reconstruct_{q}": functools.partial(reconstruct, spec=ctx.spec, num_levels=q)
                for q in self.gan.eval_levels}

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {"waveform": jax.ShapeDtypeStruct((self.data.batch_size, self.data.sequence_length),
                                                 np.float32)}

    def train_batches(self, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
        return host_audio_batches(self.data, split=self.data.train_split,
                                  shuffle=self.data.shuffle, start_batch=start_batch)

    def units_per_step(self) -> dict[str, float]:
        return {"audio_s": self.data.batch_size * self.data.sequence_length / self.codec.sample_rate}

    def flops_per_step(self) -> float:
        """The generator's analytic FLOPs (convs and RVQ distances, forward + backward = 3x
        forward); the discriminators and the mel losses come on top in XLA's count."""
        codec = nnx.eval_shape(lambda: Codec(self.codec, rngs=nnx.Rngs(0)))
        return 3.0 * sum(codec.flops(self.data.sequence_length).values()) * self.data.batch_size

    def evaluate(self, program, state, num_batches: int) -> Evaluation:
        """SI-SNR and multi-scale mel distance of eval-split crops (centre crops,
        silence-padded tails excluded) reconstructed with each of gan.eval_levels, averaged
        over every host's clips (`clips`: how many), and this host's first
        gan.audio_summaries clips as audio: `real` and `levels_<q>`."""
        gan, codec = self.gan, self.codec
        refs: list[np.ndarray] = []
        recons: dict[int, list[np.ndarray]] = {q: [] for q in gan.eval_levels}
        it = host_audio_batches(self.data, split=self.data.eval_split, shuffle=False, num_epochs=1,
                                drop_remainder=False)
        rows, crop = host_batch_size(self.data.batch_size), self.data.sequence_length
        empty = lambda: {"waveform": np.zeros((0, crop), np.float32),
                         "waveform_length": np.zeros((0,), np.int32)}
        for host in aligned_batches(it, num_batches, empty):
            # A short batch (the last of a small split, or none left on this host while
            # others go on) is padded to the global batch with silent rows of length 0
            # (the mesh needs the full batch; they are not scored).
            lengths = host["waveform_length"]
            wave = np.zeros((rows, crop), np.float32)
            wave[:len(lengths)] = host["waveform"]
            batch = program.global_batch({"waveform": wave})
            # This host's rows of each reconstruction (the others' are not addressable here).
            outs = {q: host_local(program.evals[f"reconstruct_{q}"](state, batch),
                                  program.batch_shardings["waveform"])
                    for q in gan.eval_levels}
            for i, n in enumerate(lengths):
                if n < codec.hop:
                    continue
                refs.append(host["waveform"][i, :n])
                for q in gan.eval_levels:
                    recons[q].append(outs[q][i, :n])
        sums = {"clips": float(len(refs))}
        for q in gan.eval_levels:
            kbps = codec.bitrate(q) / 1000.0
            sums[f"si_snr_db/{kbps:g}kbps"] = float(np.sum(
                [si_snr(r, e) for r, e in zip(refs, recons[q])]))
            sums[f"mel_distance/{kbps:g}kbps"] = float(np.sum(
                [mel_distance(r[None], e[None], sample_rate=codec.sample_rate)[0]
                 for r, e in zip(refs, recons[q])]))
        sums = process_sum(sums)  # every host's clips count, and every host logs the same
        clips = sums.pop("clips")
        if not clips:
            log.warning("evaluation split %r of %s is empty", self.data.eval_split,
                        self.data.mixture_or_task_name)
            return Evaluation(scalars={}, sample_rate=codec.sample_rate)
        scalars = {name: total / clips for name, total in sums.items()}
        scalars["clips"] = clips  # how many were scored, over all hosts
        k = min(gan.audio_summaries, len(refs))
        audios = {}
        if k:
            n = min(len(r) for r in refs[:k])
            audios["real"] = np.stack([r[:n] for r in refs[:k]])
            for q in gan.eval_levels:
                audios[f"levels_{q:02d}"] = np.stack([e[:n] for e in recons[q][:k]])
        return Evaluation(scalars=scalars, audios=audios, sample_rate=codec.sample_rate)

    def model_configs(self) -> dict[str, Any]:
        return {"codec": self.codec, "data": self.data}

    @classmethod
    def inference_model(cls, configs: Mapping[str, Any], rngs) -> Codec:
        return Codec(configs["codec"], rngs=rngs)
