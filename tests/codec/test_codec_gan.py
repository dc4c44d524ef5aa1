"""STFT/mel, discriminators and codec GAN losses: correctness on known signals, shapes,
finite bf16 compute. The GAN step composing them is tested through the trainer
(tests/codec/test_step.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mufm.audio.features import mel_filterbank
from mufm.layers.spectral import mel_spectrogram, stft
from mufm.codec.losses import (CodecLossConfig, discriminator_loss, generator_loss,
                                      multiscale_mel_loss)
from mufm.codec.discriminators import DiscriminatorConfig, build_discriminators

TINY_D = DiscriminatorConfig(wave_channels=4, wave_max_channels=16, wave_downsample_layers=2,
                             stft_channels=2)


def test_stft_matches_numpy_and_finds_a_tone():
    sr, n_fft, hop = 24_000, 256, 64
    t = np.arange(4096) / sr
    x = np.sin(2 * np.pi * 1875.0 * t).astype(np.float32)  # exactly bin 20 of 256 at 24 kHz
    spec = np.asarray(stft(jnp.asarray(x), n_fft, hop, center=False))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frame = x[3 * hop:3 * hop + n_fft] * window
    ref = np.fft.rfft(frame)  # float64: exact next to fp32
    # An fp32 radix-2 FFT of n points is within 7 log2(n) u ||X||_2 of exact (Higham,
    # Accuracy and Stability, 24.1), plus 2 u ||X|| for the rounded window and product;
    # ||X||_2 = sqrt(n) ||frame||_2 (Parseval) bounds every bin.
    bound = (7 * np.log2(n_fft) + 2) * 2.0 ** -24 * np.sqrt(n_fft) * np.linalg.norm(frame)
    np.testing.assert_allclose(spec[3], ref, rtol=0, atol=bound)
    assert np.argmax(np.abs(spec[3])) == 20
    centred = stft(jnp.asarray(x), n_fft, hop)
    assert centred.shape == (1 + 4096 // hop, n_fft // 2 + 1)


def test_mel_filterbank_and_gradients_are_sane():
    fb = mel_filterbank(24_000, 1024, 64)
    assert fb.shape == (513, 64) and fb.max() <= 1.0 and (fb.sum(0) > 0).all()
    # Silence must not give NaN gradients (|stft| has an infinite slope at 0).
    g = jax.grad(lambda v: jnp.sum(mel_spectrogram(v, sample_rate=24_000, n_fft=64, hop=16,
                                                   n_mels=64)))(jnp.zeros((1, 960)))
    assert bool(jnp.all(jnp.isfinite(g)))


def test_multiscale_mel_loss_is_zero_on_identity_and_grows_with_error():
    x = 0.3 * jax.random.normal(jax.random.key(0), (2, 4800))
    cfg = CodecLossConfig()
    # Identical inputs go through identical ops: every term is exactly 0 (the safe norm
    # included), not merely small.
    assert float(multiscale_mel_loss(x, x, cfg)) == 0.0
    small = float(multiscale_mel_loss(x, x + 0.01 * jax.random.normal(jax.random.key(1), x.shape), cfg))
    large = float(multiscale_mel_loss(x, x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), cfg))
    assert 0 < small < large


@pytest.fixture(scope="module")
def discriminators():
    return build_discriminators(TINY_D)


def test_discriminator_outputs_per_rate(discriminators):
    outs = nnx.jit(lambda d, x: d(x))(discriminators, jnp.zeros((2, 9600)))
    assert len(outs) == 4  # 1x, 2x, 4x waveform + STFT
    wave_lengths = [o[0].shape[1] for o in outs[:3]]
    assert wave_lengths[0] > wave_lengths[1] > wave_lengths[2]
    # STFT: 1 + 9600 // 256 = 38 frames, time strides 2 x 2 x 2 ('same') -> 5 logits.
    assert outs[3][0].shape == (2, 5)
    assert all(len(feats) > 0 for _, feats in outs)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_losses_finite_in_mixed_precision(dtype):
    disc = build_discriminators(DiscriminatorConfig(
        wave_channels=4, wave_max_channels=16, wave_downsample_layers=2, stft_channels=2, dtype=dtype))
    real = 0.8 * jax.random.normal(jax.random.key(0), (2, 9600))
    fake = (real + 0.3 * jax.random.normal(jax.random.key(1), real.shape)).astype(dtype)
    cfg = CodecLossConfig()

    @nnx.jit
    def losses(d, real, fake):
        gl, gm = generator_loss(d, real, fake, jnp.float32(0.1), cfg)
        dl, dm = discriminator_loss(d, real, fake, cfg)
        return gl, gm, dl, dm

    gl, gm, dl, dm = losses(disc, real, fake)
    for v in list(gm.values()) + list(dm.values()) + [gl, dl]:
        assert v.dtype == jnp.float32 and bool(jnp.isfinite(v)), (dtype, gm, dm)
    assert float(gm["feature_matching"]) > 0 and float(dl) > 0
