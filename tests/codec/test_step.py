"""The codec GAN step through the trainer's program: warm-up vs adversarial steps, both
optimizers, codebook state, per-level metrics, non-finite skips, and the same step on an
8-device mesh as on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mufm.codec.model import CodecConfig
from mufm.codec.losses import CodecLossConfig
from mufm.codec.discriminators import DiscriminatorConfig
from mufm.parallel.logical import sharding_context
from mufm.parallel.mesh import MeshConfig
from mufm.codec.task import CodecTask
from mufm.data.pipeline import DataConfig
from mufm.codec.step import GANConfig, adversarial_scale
from mufm.train.loop import RunConfig, build_program
from mufm.train.optim import OptimizerConfig

CODEC = CodecConfig(channels=4, embedding_dim=16, num_levels=4, codebook_size=32,
                    dead_threshold=0.05)
# Every kind of player and loss term, at the smallest size (compile time is the test's cost).
DISC = DiscriminatorConfig(num_wave_scales=2, wave_channels=4, wave_max_channels=16,
                           wave_downsample_layers=1, stft_channels=2, stft_window=256,
                           stft_hop=64, stft_strides=((1, 2), (2, 2)))
LOSSES = CodecLossConfig(mel_min_log2=6, mel_max_log2=8)
OPT = OptimizerConfig(schedule="constant", warmup_steps=0, learning_rate=1e-3, b1=0.5, b2=0.9,
                      weight_decay=0.0, clip_norm=100.0)
GAN = GANConfig(discriminator_start=1, eval_levels=(1, 4))


TASK = CodecTask(codec=CODEC, discriminator=DISC, losses=LOSSES, gan=GAN,
                 data=DataConfig(mixture_or_task_name="mufm_synthetic_audio", sequence_length=2400,
                                 batch_size=8, task_modules=("mufm.data.synthetic_audio",)),
                 generator_optimizer=OPT, discriminator_optimizer=OPT)


def program_for(devices, mesh=MeshConfig(ici_parallelism=(-1, 1, 1))):
    return build_program(TASK, mesh, RunConfig(model_dir="unused", train_steps=10), devices=devices)


@pytest.fixture(scope="module")
def program():
    return program_for(jax.devices()[:1])


def batch(program, b=8, n=2400, seed=0):
    wave = 0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / 24000)[None] * np.ones((b, 1))
    wave = wave + 0.05 * np.random.default_rng(seed).standard_normal((b, n))
    return {"waveform": jax.device_put(wave.astype(np.float32), program.batch_shardings["waveform"])}


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def differs(a, b):
    return any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, b)))


def test_warmup_then_adversarial_steps(program):
    with sharding_context(program.mesh, program.rules):
        state = program.initialize(0)
        before = host(state)
        assert program.step_at(0) is program.steps["warmup"] and program.step_at(1) is program.steps["train"]
        state, m0 = program.step_at(0)(state, batch(program))
        after_warmup = host(state)
        state, m1 = program.step_at(1)(state, batch(program, seed=1))
        after_gan = host(state)

    # Warm-up: the generator and its codebooks move, the discriminator and its Adam state do not.
    assert differs(before.params["generator"], after_warmup.params["generator"])
    assert not differs(before.params["discriminator"], after_warmup.params["discriminator"])
    assert not differs(before.opt_state["discriminator"], after_warmup.opt_state["discriminator"])
    assert after_warmup.model_state["generator"]["quantizer"]["initialized"].min() == 1
    assert float(m0["adversarial_scale"]) == 0.0 and float(m0["discriminator_loss"]) == 0.0
    # Adversarial step: both players move; every reported figure is finite.
    assert differs(after_warmup.params["discriminator"], after_gan.params["discriminator"])
    assert differs(after_warmup.params["generator"], after_gan.params["generator"])
    assert float(m1["adversarial_scale"]) == 1.0 and float(m1["discriminator_loss"]) > 0
    assert float(m1["feature_matching"]) > 0 and int(after_gan.step) == 2
    for k, v in m1.items():
        assert np.isfinite(float(v)), k
    # Per-level codebook figures for each of the 4 levels (quantizer dropout may leave the
    # deeper levels without frames in a batch; level 0 always has all of them).
    assert float(m1["codebook/usage/level_00"]) > 0.0
    for level in range(4):
        assert 1.0 <= float(m1[f"codebook/perplexity/level_{level:02d}"]) <= CODEC.codebook_size
        assert 0.0 <= float(m1[f"codebook/usage/level_{level:02d}"]) <= 1.0
        assert f"codebook/restarts/level_{level:02d}" in m1


def test_nonfinite_batch_changes_nothing_but_the_counters(program):
    with sharding_context(program.mesh, program.rules):
        state = program.initialize(0)
        state, _ = program.step_at(1)(state, batch(program))
        before = host(state)
        bad = np.asarray(batch(program)["waveform"]).copy()
        bad[0, 100] = np.nan
        state, m = program.step_at(1)(state, {"waveform": jax.device_put(bad, program.batch_shardings["waveform"])})
        after = host(state)
    assert int(m["nonfinite_skipped"]) == 1 and int(m["nonfinite_streak"]) == 1
    for part in ("params", "opt_state", "model_state"):
        assert not differs(getattr(before, part), getattr(after, part)), part


def test_adversarial_scale_ramp():
    cfg = GANConfig(discriminator_start=10, adversarial_ramp_steps=4)
    got = [float(adversarial_scale(jnp.int32(s), cfg)) for s in (0, 9, 10, 11, 13, 20)]
    assert got == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert float(adversarial_scale(jnp.int32(3), GANConfig(discriminator_start=3))) == 1.0


def test_eight_device_step_matches_one_device(program):
    """Batch over 8 fake devices (data 2 x fsdp 2 x tensor 2 mesh, params replicated by the
    codec's rules): the same losses and the same updated generator as on one device."""
    eight = program_for(jax.devices()[:8], MeshConfig(ici_parallelism=(2, 2, 2)))
    results = []
    for prog in (program, eight):
        with sharding_context(prog.mesh, prog.rules):
            state = prog.initialize(0)
            b = batch(prog)
            state, m = prog.step_at(1)(state, b)
            results.append((host(m), host(state.params)))
    (m1, p1), (m8, p8) = results
    # The loss terms are sums over the batch's samples in another order on 8 devices: the
    # recursive-summation bound is n * u (n terms, u = 2^-24 the fp32 unit roundoff).
    n = int(np.prod(np.shape(b["waveform"])))
    for k in ("mel", "generator_loss", "discriminator_loss", "feature_matching"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=n * 2.0 ** -24, err_msg=k)
    # The gradients are not bounded that way: the generator's runs through ln(mel + 1e-5),
    # where a near-empty bin carries the STFT's rounding error (relative to the frame's
    # energy) divided by its own energy, so summation order alone moved the norm by 6.7e-4
    # on an AVX-512 CPU (1954.88 vs 1953.58). A sharding bug (a missing or doubled
    # all-reduce) changes a norm by a factor of 2 or more; 1% separates the two cleanly.
    for k in ("grad_norm/generator", "grad_norm/discriminator"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-2, err_msg=k)
    # Adam's first update is lr * g / |g|: a gradient within rounding of 0 may flip sign
    # between reduction orders, so a handful of elements may differ by up to 2 * lr.
    a, b = (np.concatenate([x.ravel() for x in jax.tree.leaves(p)]) for p in (p8, p1))
    close = np.isclose(a, b, rtol=1e-4, atol=1e-6)
    assert close.mean() > 0.999 and np.abs(a - b).max() <= 2 * OPT.learning_rate + 1e-6
