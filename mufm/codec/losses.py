"""Codec GAN losses (SoundStream): multi-scale mel reconstruction, hinge adversarial loss,
L1 feature matching and the quantizer's commitment loss, with weights in gin.

The two functions a GAN train step needs:

    loss, metrics = generator_loss(discriminators, real, fake, commitment_loss, cfg,
                                   adversarial_scale=1.0)
    loss, metrics = discriminator_loss(discriminators, real, fake, cfg)

`real`/`fake` are waveforms [b, n]. `generator_loss` differentiates through `fake` (and the
discriminator forward, whose parameters the generator step does not update); pass
`discriminators=None` during a warm-up with no discriminator at all, or keep them and ramp
`adversarial_scale` (0 turns off the adversarial and feature-matching terms; the
discriminator is still run). `discriminator_loss` stops gradients into `fake`. Every loss is
computed in fp32 whatever the compute dtype. The trainer's GAN step that composes them
with the codec and its codebook state is `mufm.codec.step.gan_train_step`.

Scale note: with `mel_log_alpha` the log-mel term of the 2048 window is weighted by 32, so
the reconstruction loss of an untrained codec is in the hundreds; the adversarial and
feature-matching terms are O(1) x their weights.
"""
from __future__ import annotations

import dataclasses
import math

import gin
import jax
import jax.numpy as jnp

from mufm.audio import SAMPLE_RATE
from mufm.audio.features import LOG_MEL_FLOOR
from mufm.layers.spectral import mel_spectrogram, mel_windows


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CodecLossConfig:
    sample_rate: int = SAMPLE_RATE
    reconstruction_weight: float = 1.0
    adversarial_weight: float = 1.0
    feature_matching_weight: float = 100.0
    commitment_weight: float = 1.0
    mel_min_log2: int = 6  # windows 2^6 .. 2^11 samples, hop = window / 4
    mel_max_log2: int = 11
    n_mels: int = 64
    # SoundStream weighs the log-mel L2 term of window s by sqrt(s / 2); False weighs it 1.
    mel_log_alpha: bool = True
    waveform_l1_weight: float = 0.0  # optional time-domain L1 (off in SoundStream)


def multiscale_mel_loss(real: jax.Array, fake: jax.Array, cfg: CodecLossConfig) -> jax.Array:
    """sum_s [ mean |S_s(x) - S_s(y)|  +  alpha_s * mean_t ||log S_s(x) - log S_s(y)||_2 ]
    over windows s = 2^lo .. 2^hi, S_s the 64-band mel magnitude with hop s / 4."""
    total = jnp.zeros((), jnp.float32)
    for s in mel_windows(cfg.mel_min_log2, cfg.mel_max_log2):
        kw = dict(sample_rate=cfg.sample_rate, n_fft=s, hop=s // 4, n_mels=cfg.n_mels)
        mx = mel_spectrogram(real.astype(jnp.float32), **kw)
        my = mel_spectrogram(fake.astype(jnp.float32), **kw)
        l1 = jnp.mean(jnp.abs(mx - my))
        dlog = jnp.log(mx + LOG_MEL_FLOOR) - jnp.log(my + LOG_MEL_FLOOR)  # of the one log-mel
        sq = jnp.sum(dlog ** 2, -1)
        # A safe norm: exactly 0 for identical frames, and no NaN gradient there.
        l2log = jnp.mean(jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0))
        alpha = math.sqrt(s / 2) if cfg.mel_log_alpha else 1.0
        total = total + l1 + alpha * l2log
    return total


def _logits(outputs):
    return [o[0].astype(jnp.float32) for o in outputs]


def generator_adversarial_loss(fake_outputs) -> jax.Array:
    """Hinge: mean over discriminators of mean_t max(0, 1 - D(G(x)))."""
    return jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(1.0 - l)) for l in _logits(fake_outputs)]))


def discriminator_hinge_loss(real_outputs, fake_outputs) -> jax.Array:
    """mean over discriminators of mean_t [max(0, 1 - D(x)) + max(0, 1 + D(G(x)))]."""
    terms = [jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
             for r, f in zip(_logits(real_outputs), _logits(fake_outputs))]
    return jnp.mean(jnp.stack(terms))


def feature_matching_loss(real_outputs, fake_outputs) -> jax.Array:
    """mean over discriminators k and layers l of mean |D_k^l(x) - D_k^l(G(x))| (the real
    features are targets: no gradient)."""
    terms = []
    for (_, real_feats), (_, fake_feats) in zip(real_outputs, fake_outputs):
        for r, f in zip(real_feats, fake_feats):
            r = jax.lax.stop_gradient(r.astype(jnp.float32))
            terms.append(jnp.mean(jnp.abs(r - f.astype(jnp.float32))))
    return jnp.mean(jnp.stack(terms))


def generator_loss(discriminators, real: jax.Array, fake: jax.Array, commitment_loss: jax.Array,
                   cfg: CodecLossConfig, *, adversarial_scale: float | jax.Array = 1.0,
                   real_outputs=None):
    """Total generator loss and its terms (fp32 scalars in `metrics`). `real_outputs`: the
    discriminators' outputs on `real` when the caller already has them (the GAN step
    computes them once for both players); they are targets here, never differentiated."""
    real = jax.lax.stop_gradient(real.astype(jnp.float32))
    fake = fake.astype(jnp.float32)
    mel = multiscale_mel_loss(real, fake, cfg)
    metrics = {"mel": mel, "commitment": jnp.asarray(commitment_loss, jnp.float32)}
    loss = cfg.reconstruction_weight * mel + cfg.commitment_weight * metrics["commitment"]
    if cfg.waveform_l1_weight:
        metrics["waveform_l1"] = jnp.mean(jnp.abs(real - fake))
        loss = loss + cfg.waveform_l1_weight * metrics["waveform_l1"]
    if discriminators is not None:
        real_out = discriminators(real) if real_outputs is None else real_outputs
        fake_out = discriminators(fake)
        metrics["adversarial"] = generator_adversarial_loss(fake_out)
        metrics["feature_matching"] = feature_matching_loss(real_out, fake_out)
        loss = loss + adversarial_scale * (cfg.adversarial_weight * metrics["adversarial"]
                                           + cfg.feature_matching_weight * metrics["feature_matching"])
    metrics["generator_loss"] = loss
    return loss, metrics


def discriminator_loss(discriminators, real: jax.Array, fake: jax.Array, cfg: CodecLossConfig,
                       *, real_outputs=None):
    """Hinge discriminator loss on real vs (stopped) reconstructions, with mean logits.
    `real_outputs`: the discriminators' outputs on `real`, when the caller computed them
    (and differentiates through them itself)."""
    del cfg  # the hinge loss has no weights; kept for a uniform signature
    real_out = (discriminators(jax.lax.stop_gradient(real.astype(jnp.float32)))
                if real_outputs is None else real_outputs)
    fake_out = discriminators(jax.lax.stop_gradient(fake.astype(jnp.float32)))
    loss = discriminator_hinge_loss(real_out, fake_out)
    metrics = {
        "discriminator_loss": loss,
        "logits_real": jnp.mean(jnp.stack([jnp.mean(l) for l in _logits(real_out)])),
        "logits_fake": jnp.mean(jnp.stack([jnp.mean(l) for l in _logits(fake_out)])),
    }
    return loss, metrics
