"""`train_codec()`: the gin-configurable entry function that trains the codec GAN, top to
bottom, on the core trainer's pieces (mesh and logical rules, state from shapes, orbax
checkpoints with the input position, metrics, the shared step loop).

mesh -> abstract CodecGAN state (generator + discriminator params, both optimizers' states,
codebook EMA state) -> restore the newest checkpoint or initialise in place -> waveform
crops from an audio seqio task, positioned at the restored step -> jitted, donated GAN step
-> metrics (each loss term, per-level codebook perplexity / usage / restarts), evaluation on
held-out crops at each of `GANConfig.eval_levels` (SI-SNR, mel distance) with audio
summaries in TensorBoard -> async checkpoints -> final save.

    python -m mufm.codec train --gin_file=experiments/codec_corpus_cpu.gin --gin.MODEL_DIR=\"runs/codec\"
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

from mufm.data.pipeline import DataConfig, host_audio_batches, host_batch_size
from mufm.eval.codec_metrics import mel_distance, si_snr
from mufm.gin_flags import GinConfigError
from mufm.models.codec import CodecConfig
from mufm.models.codec_gan import GROUPS, make_codec_gan_fn
from mufm.models.codec_losses import CodecLossConfig
from mufm.models.discriminators import DiscriminatorConfig
from mufm.parallel.logical import Rules, sharding_context
from mufm.parallel.mesh import MeshConfig, build_mesh
from mufm.parallel.multihost import batch_sharding, global_batch, maybe_initialize_distributed
from mufm.train.checkpoint import CheckpointConfig, Checkpointer, write_gin_config
from mufm.train.codec_step import GANConfig, gan_train_step, reconstruct
from mufm.train.loop import RunConfig, restore_or_initialize, run_steps
from mufm.train.optim import OptimizerConfig, make_optimizer, per_group
from mufm.train.state import ModelSpec, TrainState, abstract_state, initialize

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CodecProgram:
    """What train_codec() runs, from configs and shapes alone (shared with the AOT compile
    check). Trace the steps inside `sharding_context(program.mesh, program.rules)`."""
    mesh: Mesh
    rules: Rules
    codec: CodecConfig
    tx: optax.GradientTransformation  # per_group(generator, discriminator)
    make_model: Callable
    spec: ModelSpec
    abstract: TrainState
    shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Any  # jitted GAN step, donates the state
    warmup_step: Any  # jitted reconstruction-only step (before GANConfig.discriminator_start)
    discriminator_start: int
    reconstruct: Callable[[int], Any]  # num_levels -> jitted eval reconstruction

    def step_at(self, step: int):
        """The jitted step that trains step `step` (0-based)."""
        return self.train_step if step >= self.discriminator_start else self.warmup_step


def build_codec_program(codec: CodecConfig, discriminator: DiscriminatorConfig,
                        losses: CodecLossConfig, gan: GANConfig,
                        generator_optimizer: OptimizerConfig,
                        discriminator_optimizer: OptimizerConfig, mesh: MeshConfig,
                        run: RunConfig, devices: Sequence[jax.Device] | None = None) -> CodecProgram:
    if losses.sample_rate != codec.sample_rate:
        raise GinConfigError(f"CodecLossConfig.sample_rate={losses.sample_rate} differs from "
                             f"CodecConfig.sample_rate={codec.sample_rate}")
    device_mesh = build_mesh(mesh, devices)
    rules = mesh.rules
    made = {"generator": make_optimizer(generator_optimizer, run.train_steps),
            "discriminator": make_optimizer(discriminator_optimizer, run.train_steps)}
    txs = {k: made[k][0] for k in GROUPS}
    schedules = {k: made[k][1] for k in GROUPS}
    tx = per_group(txs)
    make_model = make_codec_gan_fn(codec, discriminator)
    with sharding_context(device_mesh, rules):
        abstract, shardings, spec = abstract_state(make_model, tx, device_mesh, rules, run.seed)
    batch_sh = batch_sharding(device_mesh, rules, 2)

    def jit_step(adversarial: bool):
        step = functools.partial(gan_train_step, spec=spec, txs=txs, schedules=schedules,
                                 losses=losses, cfg=gan, adversarial=adversarial, seed=run.seed)
        return jax.jit(step, in_shardings=(shardings, {"waveform": batch_sh}),
                       out_shardings=(shardings, None), donate_argnums=(0,))

    @functools.lru_cache(maxsize=None)
    def p_reconstruct(num_levels: int):
        return jax.jit(functools.partial(reconstruct, spec=spec, num_levels=num_levels),
                       in_shardings=(shardings, batch_sh), out_shardings=batch_sh)

    return CodecProgram(mesh=device_mesh, rules=rules, codec=codec, tx=tx, make_model=make_model,
                        spec=spec, abstract=abstract, shardings=shardings, batch_sharding=batch_sh,
                        train_step=jit_step(True), warmup_step=jit_step(False),
                        discriminator_start=gan.discriminator_start, reconstruct=p_reconstruct)


def abstract_codec_batch(program: CodecProgram, data: DataConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the GAN step receives, as sharded shapes (AOT lowering)."""
    return {"waveform": jax.ShapeDtypeStruct((data.batch_size, data.sequence_length), np.float32,
                                             sharding=program.batch_sharding)}


@gin.configurable
def train_codec(codec: CodecConfig = gin.REQUIRED, discriminator: DiscriminatorConfig = gin.REQUIRED,
                losses: CodecLossConfig = gin.REQUIRED, gan: GANConfig = gin.REQUIRED,
                data: DataConfig = gin.REQUIRED, generator_optimizer: OptimizerConfig = gin.REQUIRED,
                discriminator_optimizer: OptimizerConfig = gin.REQUIRED,
                checkpoint: CheckpointConfig = gin.REQUIRED, mesh: MeshConfig = gin.REQUIRED,
                run: RunConfig = gin.REQUIRED) -> dict[str, float]:
    """Trains the codec GAN; returns the last logged metrics."""
    if data.sequence_length % codec.hop:
        raise GinConfigError(f"DataConfig.sequence_length={data.sequence_length} (crop samples) "
                             f"is not a multiple of the codec hop {codec.hop}")
    maybe_initialize_distributed()
    program = build_codec_program(codec, discriminator, losses, gan, generator_optimizer,
                                  discriminator_optimizer, mesh, run)
    device_mesh, rules = program.mesh, program.rules

    with sharding_context(device_mesh, rules):
        ckpt = Checkpointer(run.model_dir, checkpoint)
        state = restore_or_initialize(ckpt, program.abstract, lambda: initialize(
            program.make_model, program.tx, program.shardings, run.seed))
        start = int(state.step)
        write_gin_config(run.model_dir, gin.operative_config_str())
        logger = _logger(run, data, codec, start)
        batches = host_audio_batches(data, split=data.train_split, shuffle=data.shuffle,
                                     start_batch=start)
        to_global = lambda b: global_batch({"waveform": b["waveform"]}, device_mesh, rules)

        def evaluate(state, step):
            metrics, audios = evaluate_codec(program, state, data, gan, run.eval_batches)
            logger.write_eval(step, metrics)
            if audios:
                logger.write_audios(step, audios, codec.sample_rate)

        return run_steps(program.step_at, state, (to_global(b) for b in batches), run=run,
                         checkpoint=checkpoint, ckpt=ckpt, logger=logger,
                         task_name=data.mixture_or_task_name, evaluate=evaluate)


def _logger(run: RunConfig, data: DataConfig, codec: CodecConfig, start: int):
    from mufm.train.metrics import MetricsLogger

    return MetricsLogger(run.model_dir, total_steps=run.train_steps, start_step=start,
                         units_per_step={"audio_s": data.batch_size * data.sequence_length
                                         / codec.sample_rate},
                         postfix=("mel", "discriminator_loss", "codebook/restarts_total"))


def evaluate_codec(program: CodecProgram, state: TrainState, data: DataConfig, gan: GANConfig,
                   num_batches: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """SI-SNR and multi-scale mel distance of eval-split crops (centre crops, silence-padded
    tails excluded) reconstructed with each of gan.eval_levels, and the first
    gan.audio_summaries clips as audio: `real` and `levels_<q>`."""
    refs: list[np.ndarray] = []
    recons: dict[int, list[np.ndarray]] = {q: [] for q in gan.eval_levels}
    it = host_audio_batches(data, split=data.eval_split, shuffle=False, num_epochs=1,
                            drop_remainder=False)
    for _ in range(num_batches):
        host = next(it, None)
        if host is None:
            break
        # The last batch of a small split is short: pad it to the global batch with silent
        # rows of length 0 (the mesh needs the full batch; the rows are not scored).
        lengths = host["waveform_length"]
        wave = np.zeros((host_batch_size(data.batch_size), host["waveform"].shape[1]), np.float32)
        wave[:len(lengths)] = host["waveform"]
        batch = global_batch({"waveform": wave}, program.mesh, program.rules)
        outs = {q: np.asarray(jax.device_get(program.reconstruct(q)(state, batch["waveform"])))
                for q in gan.eval_levels}
        for i, n in enumerate(lengths):
            if n < program.codec.hop:
                continue
            refs.append(host["waveform"][i, :n])
            for q in gan.eval_levels:
                recons[q].append(outs[q][i, :n])
    if not refs:
        log.warning("evaluation split %r of %s is empty", data.eval_split, data.mixture_or_task_name)
        return {}, {}
    metrics = {}
    for q in gan.eval_levels:
        kbps = program.codec.bitrate(q) / 1000.0
        metrics[f"si_snr_db/{kbps:g}kbps"] = float(np.mean(
            [si_snr(r, e) for r, e in zip(refs, recons[q])]))
        metrics[f"mel_distance/{kbps:g}kbps"] = float(np.mean(
            [mel_distance(r[None], e[None], sample_rate=program.codec.sample_rate)[0]
             for r, e in zip(refs, recons[q])]))
    k = min(gan.audio_summaries, len(refs))
    audios = {}
    if k:
        n = min(len(r) for r in refs[:k])
        audios["real"] = np.stack([r[:n] for r in refs[:k]])
        for q in gan.eval_levels:
            audios[f"levels_{q:02d}"] = np.stack([e[:n] for e in recons[q][:k]])
    return metrics, audios
