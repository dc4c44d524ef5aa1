"""SoundStream codec: frame rate, causality, logical axes, pure forward, overfitting."""
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mufm.layers.seanet import CausalConv1d, CausalConvTranspose1d
from mufm.codec.model import CodecConfig, apply_codec, build_codec, split_codec
from mufm.codec.losses import CodecLossConfig, multiscale_mel_loss
from mufm.parallel.mesh import DEFAULT_RULES

TINY = CodecConfig(channels=4, embedding_dim=16, num_levels=4, codebook_size=32)  # = conftest
U = 2.0 ** -24  # fp32 unit roundoff


def conv_rounding_bound(layer, x) -> np.ndarray:
    """How far apart two fp32 evaluations of `layer(x)` can be that add each output's terms
    in different orders (chunked vs whole, one conv algorithm vs another): an output is a
    sum of at most n = K * c_in products plus the bias, any order lands within gamma_n =
    n u / (1 - n u) times the sum of the terms' magnitudes of the exact value (Higham,
    Accuracy and Stability, 3.1), so two orders within twice that; the magnitudes' sum is
    the layer with |weights| applied to |x|."""
    absolute = nnx.clone(layer)
    absolute.kernel[...] = jnp.abs(layer.kernel[...])
    absolute.bias[...] = jnp.abs(layer.bias[...])
    k, c_in, _ = layer.shape
    n = k * c_in + 1
    return 2 * n * U / (1 - n * U) * np.asarray(absolute(jnp.abs(jnp.asarray(x))))


def assert_within(got, want, bound):
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


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


@pytest.mark.parametrize("layer, chunks", [
    (CausalConv1d(3, 5, 7, dilation=3, rngs=nnx.Rngs(0)), (5, 1, 17, 9)),
    (CausalConv1d(3, 5, 8, stride=4, rngs=nnx.Rngs(0)), (4, 12, 8, 8)),
    (CausalConv1d(1, 5, 7, dilation=2, rngs=nnx.Rngs(0)), (3, 1, 20)),  # stem-like, as a matmul
    (CausalConv1d(3, 1, 7, rngs=nnx.Rngs(0)), (9, 2, 13)),  # head-like, as a matmul
    (CausalConvTranspose1d(3, 5, 7, stride=3, rngs=nnx.Rngs(0)), (1, 4, 2, 5)),  # 2 frames of context
    (CausalConvTranspose1d(3, 5, 3, stride=3, rngs=nnx.Rngs(0)), (2, 3, 1, 6)),  # none
])
def test_seanet_layers_stream_exactly(layer, chunks):
    x = jax.random.normal(jax.random.key(3), (2, sum(chunks), layer.shape[1]))
    state, outs, at = layer.init_stream(2), [], 0
    for c in chunks:
        y, state = layer.stream(x[:, at:at + c], state)
        outs.append(y)
        at += c
    # The carried state makes the chunks sum the very terms the whole conv sums.
    got, want = np.concatenate(outs, 1), np.asarray(layer(x))
    assert_within(got, want, conv_rounding_bound(layer, x))


@pytest.mark.parametrize("c_in, c_out, dilation", [(1, 6, 1), (1, 6, 3), (6, 1, 1), (6, 1, 9)])
def test_single_channel_convs_match_the_lax_conv(c_in, c_out, dilation):
    # The stem (one input channel) and head (one output channel) run as matmuls.
    layer = CausalConv1d(c_in, c_out, 7, dilation=dilation, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(4), (2, 100, c_in))
    ref = jax.lax.conv_general_dilated(x, layer.kernel[...], (1,), ((6 * dilation, 0),),
                                       rhs_dilation=(dilation,), dimension_numbers=("NWC", "WIO", "NWC"))
    got, want = np.asarray(layer(x)), np.asarray(ref + layer.bias[...])
    assert_within(got, want, conv_rounding_bound(layer, x))


@pytest.mark.parametrize("kernel, stride", [(6, 3), (7, 3), (16, 8), (4, 4)])
def test_transposed_conv_is_the_causal_part_of_a_direct_transposed_conv(kernel, stride):
    layer = CausalConvTranspose1d(3, 2, kernel, stride=stride, rngs=nnx.Rngs(2))
    x = np.asarray(jax.random.normal(jax.random.key(5), (1, 9, 3)))
    w = np.asarray(layer.kernel[...])
    full = np.zeros((1, 9 * stride + kernel, 2), np.float32)
    for f in range(9):  # every input frame scatters its K taps from f * stride on
        full[:, f * stride:f * stride + kernel] += np.einsum("bc,kcd->bkd", x[:, f], w)
    got = np.asarray(layer(jnp.asarray(x)))
    assert_within(got, full[:, :9 * stride], conv_rounding_bound(layer, x))


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
    from mufm.codec.losses import CodecLossConfig
    from mufm.gin_flags import parse
    from mufm.codec.discriminators import DiscriminatorConfig
    classes = (CodecConfig, CodecLossConfig, DiscriminatorConfig)
    try:
        parse([f"models/codec_{name}.gin"], [], finalize=False)
        built = {cls: cls() for cls in classes}
        # Every field the file (with its includes) binds, and the value it binds.
        bound = {}
        for cls in classes:
            for f in dataclasses.fields(cls):
                try:
                    bound[cls, f.name] = gin.query_parameter(f"{cls.__name__}.{f.name}")
                except ValueError:  # not bound: the dataclass default applies
                    pass
    finally:
        gin.clear_config()
    cfg = built[CodecConfig]
    assert (cfg.channels, cfg.residual_compress, cfg.dtype) == (channels, compress, dtype)
    assert (cfg.num_levels, cfg.codebook_size, cfg.frame_rate) == (12, 1024, 50.0)
    assert cfg.bitrate() == 6000.0
    assert built[CodecLossConfig].feature_matching_weight == 100.0
    assert built[DiscriminatorConfig].stft_window == 1024
    # The built configs carry what the file binds, not their dataclass defaults: the
    # codec_tiny.gin base binds 11 CodecConfig, 4 DiscriminatorConfig and 8 CodecLossConfig
    # fields, every one of them explicitly.
    per_class = {cls: sum(c is cls for c, _ in bound) for cls in classes}
    assert per_class == {CodecConfig: 11, CodecLossConfig: 8, DiscriminatorConfig: 4}, per_class
    for (cls, field), value in bound.items():
        got = getattr(built[cls], field)
        assert got == (tuple(value) if isinstance(value, list) else value), (cls.__name__, field)
    assert bound[CodecConfig, "channels"] == channels and bound[CodecConfig, "dtype"] == dtype
    # Not vacuous: each file moves fields of the codec and of the discriminators away from
    # their dataclass defaults, so configs built without the file fail the loop above.
    changed = {(cls, field) for (cls, field), value in bound.items() if value != getattr(cls(), field)}
    assert {cls for cls, _ in changed} >= {CodecConfig, DiscriminatorConfig}, changed
