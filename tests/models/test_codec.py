"""SoundStream codec: frame rate, causality, logical axes, pure forward, overfitting."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mufm.models.codec import CodecConfig, apply_codec, build_codec, split_codec
from mufm.models.codec_losses import CodecLossConfig, multiscale_mel_loss
from mufm.parallel.mesh import DEFAULT_RULES

TINY = CodecConfig(channels=4, embedding_dim=16, num_levels=4, codebook_size=32)  # = conftest


@pytest.fixture
def model(tiny_codec):
    return tiny_codec


def test_frame_rate_is_exactly_50_hz(model):
    assert TINY.hop == 480 and TINY.frame_rate == 50.0
    assert CodecConfig().bitrate() == 6000.0 and CodecConfig().bitrate(3) == 1500.0
    for seconds in (1, 3):
        codes = nnx.jit(lambda m, x: m.encode(x))(model, jnp.zeros((2, 24_000 * seconds)))
        assert codes.shape == (2, 50 * seconds, TINY.num_levels) and codes.dtype == jnp.int32
    wave = nnx.jit(lambda m, c: m.decode(c))(model, jnp.zeros((2, 50, 2), jnp.int32))  # q' <= N
    assert wave.shape == (2, 24_000)


def test_odd_lengths_are_padded_and_trimmed(model):
    recon, aux = nnx.jit(lambda m, x: m(x))(model, jnp.zeros((1, 1000)))
    assert recon.shape == (1, 1000) and aux["codes"].shape == (1, 3, TINY.num_levels)


def test_encoder_and_decoder_are_causal(model):
    hop, t = TINY.hop, 5
    x = jax.random.normal(jax.random.key(0), (1, 12 * hop))
    y = x.at[:, (t + 1) * hop:].add(jax.random.normal(jax.random.key(1), (1, 11 * hop - t * hop)))
    ex, ey = model.embed(x), model.embed(y)
    # Frame t covers samples [t*hop, (t+1)*hop): frames <= t ignore everything after it.
    np.testing.assert_array_equal(np.asarray(ex[:, :t + 1]), np.asarray(ey[:, :t + 1]))
    assert not np.allclose(np.asarray(ex[:, t + 1]), np.asarray(ey[:, t + 1]))
    codes = model.encode(x)
    changed = codes.at[:, t:].set((codes[:, t:] + 1) % TINY.codebook_size)
    wx, wy = model.decode(codes), model.decode(changed)
    np.testing.assert_array_equal(np.asarray(wx[:, :t * hop]), np.asarray(wy[:, :t * hop]))
    assert not np.allclose(np.asarray(wx[:, t * hop:(t + 1) * hop]), np.asarray(wy[:, t * hop:(t + 1) * hop]))


def test_lookback_matches_the_receptive_field(model):
    # Changing samples just outside the computed look-back of frame t leaves frame t alone;
    # changing the first sample inside it does not (the analytic figure is tight).
    hop, t = TINY.hop, 20
    lb = model.encoder.lookback_samples()
    x = jax.random.normal(jax.random.key(2), (1, 24 * hop))
    edge = t * hop - lb
    outside = x.at[:, edge - 1].add(10.0)
    inside = x.at[:, edge].add(10.0)
    e, eo, ei = (np.asarray(model.embed(v)[:, t]) for v in (x, outside, inside))
    np.testing.assert_array_equal(e, eo)
    assert not np.array_equal(e, ei)


def test_every_parameter_has_known_logical_axes(model):
    known = {name for name, _ in DEFAULT_RULES}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        axes = var.get_metadata()["out_sharding"]
        assert len(axes) == var[...].ndim, (path, axes)
        assert set(axes) <= known, (path, axes)


def test_gin_binds_codec_config():
    with gin.unlock_config():
        gin.parse_config("CodecConfig.channels = 8\nCodecConfig.num_levels = 3")
    try:
        cfg = CodecConfig()
        assert cfg.channels == 8 and cfg.num_levels == 3
    finally:
        gin.clear_config()


def test_apply_codec_returns_updated_state_in_a_jitted_grad_step(tiny_codec_parts):
    graphdef, params, state = tiny_codec_parts
    x = 0.1 * jax.random.normal(jax.random.key(0), (2, 4800))

    @jax.jit
    def step(params, state, key):
        def loss(params):
            recon, aux, new_state = apply_codec(graphdef, params, state, x, train=True, key=key)
            return jnp.mean(jnp.abs(recon - x)) + aux["commitment_loss"], (new_state, aux)
        (_, (new_state, aux)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return new_state, aux, grads

    new_state, aux, grads = step(params, state, jax.random.key(1))
    assert int(new_state["quantizer"]["initialized"][...].min()) == 1
    for name in ("perplexity", "usage", "restarts", "commitment"):
        assert aux[name].shape == (TINY.num_levels,), name
    assert aux["num_levels"].shape == (2,)
    # Encoder weights get gradients through the straight-through quantizer.
    assert float(jnp.abs(grads["encoder"]["stem"]["kernel"][...]).sum()) > 0
    _, _, same = apply_codec(graphdef, params, new_state, x)
    np.testing.assert_array_equal(np.asarray(same["quantizer"]["codebook"][...]),
                                  np.asarray(new_state["quantizer"]["codebook"][...]))


def test_bf16_compute_is_finite():
    model = build_codec(CodecConfig(channels=4, embedding_dim=16, num_levels=4, codebook_size=32,
                                    dtype="bfloat16"))
    x = 0.5 * jax.random.normal(jax.random.key(0), (2, 4800))
    recon, aux = nnx.jit(lambda m, v, k: m(v, train=True, key=k))(model, x, jax.random.key(1))
    assert recon.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(recon)))
    assert bool(jnp.isfinite(aux["commitment_loss"]))


def si_snr(ref, est):
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / (ref @ ref) * ref
    return 10 * np.log10((target @ target) / ((est - target) @ (est - target)))


@pytest.mark.slow
def test_tiny_codec_overfits_one_clip():
    """Generator only, through the RVQ (4 x 64 codes), L1 + a little multi-scale mel, Adam."""
    sr, steps = 24_000, 400
    t = np.arange(sr // 2) / sr
    clip = ((0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 330 * t + 1)
             + 0.1 * np.sin(2 * np.pi * 660 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)))
    x = jnp.asarray(clip, jnp.float32)[None]
    # One 0.5 s clip has 25 frames: no code could stay above the default dead threshold.
    cfg = CodecConfig(channels=8, embedding_dim=32, num_levels=4, codebook_size=64,
                      dead_threshold=0.0, quantizer_dropout=False)
    mel_cfg = CodecLossConfig(mel_log_alpha=False)
    graphdef, params, state = split_codec(build_codec(cfg))
    opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, state, opt_state, key):
        def loss(params):
            recon, aux, new_state = apply_codec(graphdef, params, state, x, train=True, key=key)
            total = (jnp.mean(jnp.abs(recon - x)) + 1e-3 * multiscale_mel_loss(x, recon, mel_cfg)
                     + aux["commitment_loss"])
            return total, new_state
        (_, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state

    key = jax.random.key(0)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, state, opt_state = step(params, state, opt_state, sub)
    recon, _, _ = jax.jit(lambda p, s: apply_codec(graphdef, p, s, x))(params, state)
    score = si_snr(clip, np.asarray(recon[0], np.float64))
    print(f"overfit SI-SNR {score:.1f} dB after {steps} steps")
    assert score > 15.0, score


@pytest.mark.parametrize("name,channels,compress,dtype", [
    ("tiny", 8, 2, "float32"), ("base", 16, 2, "float32"), ("paper", 32, 1, "bfloat16")])
def test_model_gin_files_bind_the_configs(name, channels, compress, dtype):
    from mufm.models.codec_losses import CodecLossConfig
    from mufm.gin_flags import parse
    from mufm.models.discriminators import DiscriminatorConfig
    try:
        parse([f"models/codec_{name}.gin"], [], finalize=False)
        cfg = CodecConfig()
        assert (cfg.channels, cfg.residual_compress, cfg.dtype) == (channels, compress, dtype)
        assert (cfg.num_levels, cfg.codebook_size, cfg.frame_rate) == (12, 1024, 50.0)
        assert cfg.bitrate() == 6000.0
        assert CodecLossConfig().feature_matching_weight == 100.0
        assert DiscriminatorConfig().stft_window == 1024
    finally:
        gin.clear_config()
