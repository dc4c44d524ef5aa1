"""The musicnn port (mufm.eval.musicnn) against TensorFlow running musicnn's own graph code,
its mel frontend on hand-computable cases, the tag KL on closed forms, and a tagging
sanity check. Skipped when the musicnn wheel (the checkpoints) is not installed."""
import types

import numpy as np
import pytest

from mufm.eval import tag_kl

pytest.importorskip("musicnn", reason="pip install --no-deps musicnn==0.1.0 (launch/install.sh)")
from mufm.eval import musicnn as mn  # noqa: E402

SR = 24000


def _piano_like(seconds, sr=SR, f0=261.63):
    """Struck-string-like: 8 harmonics, 1/k^1.5 amplitudes, a note every 0.5 s decaying."""
    t = np.arange(int(seconds * sr)) / sr
    env = np.exp(-4.0 * (t % 0.5))
    notes = f0 * 2 ** (np.array([0, 4, 7, 12, 7, 4]) / 12)
    f = notes[(t // 0.5).astype(int) % len(notes)]
    phase = 2 * np.pi * np.cumsum(f) / sr
    return (0.3 * env * sum(np.sin(k * phase) / k ** 1.5 for k in range(1, 9))).astype(np.float32)


def _white_noise(seconds, sr=SR, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


# ------------------------------------------------------------------ (1) the port against TF

def _tf_layer_shims(tf):
    """tf.compat.v1.layers is gone under Keras 3 (TF 2.16+: "not available with Keras 3"),
    so musicnn's models.py cannot build as shipped. These stand-ins for the five layer
    functions it calls are written in raw TF ops (tf.nn.conv2d / batch_normalization /
    max_pool2d, matmul) with the TF1 layers' variable names, default epsilon (1e-3) and
    uniquified scopes (conv2d, conv2d_1, ...), so everything else, the padding, 'same'
    convs, concatenations, transposes, residuals, temporal pooling and flatten order, is
    musicnn's own graph code, and the checkpoint restores by name with tf Saver."""
    v1 = tf.compat.v1

    def batch_normalization(inputs, training=False, **_):
        with v1.variable_scope(None, default_name="batch_normalization"):
            c = inputs.shape[-1]
            g = v1.get_variable("gamma", [c]); b = v1.get_variable("beta", [c])
            m = v1.get_variable("moving_mean", [c]); v = v1.get_variable("moving_variance", [c])
            return tf.nn.batch_normalization(inputs, m, v, b, g, 1e-3)

    def conv2d(inputs, filters, kernel_size, padding="valid", activation=None, name=None, **_):
        with v1.variable_scope(name, default_name="conv2d"):
            k = v1.get_variable("kernel", [int(kernel_size[0]), int(kernel_size[1]),
                                           inputs.shape[-1], filters])
            b = v1.get_variable("bias", [filters])
            y = tf.nn.conv2d(inputs, k, strides=1, padding=padding.upper()) + b
            return activation(y) if activation is not None else y

    def max_pooling2d(inputs, pool_size, strides, **_):
        return tf.nn.max_pool2d(inputs, [int(p) for p in pool_size],
                                [int(s) for s in strides], "VALID")

    def dense(inputs, units, activation=None, **_):
        with v1.variable_scope(None, default_name="dense"):
            k = v1.get_variable("kernel", [inputs.shape[-1], units])
            b = v1.get_variable("bias", [units])
            y = tf.matmul(inputs, k) + b
            return activation(y) if activation is not None else y

    def flatten(inputs, **_):
        return tf.reshape(inputs, [-1, int(np.prod(inputs.shape[1:]))])

    def dropout(inputs, rate=0.5, training=False, **_):
        assert training is False
        return inputs

    return types.SimpleNamespace(batch_normalization=batch_normalization, conv2d=conv2d,
                                 max_pooling2d=max_pooling2d, dense=dense, flatten=flatten,
                                 dropout=dropout)


def _tf_reference(batch, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    from musicnn import models
    try:
        tf.compat.v1.layers.batch_normalization  # noqa: B018  (real TF1 layers, if present)
    except AttributeError:
        monkeypatch.setattr(tf.compat.v1, "layers", _tf_layer_shims(tf))
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, mn.PATCH_FRAMES, mn.N_MELS])
        logits, _, _, _, _, _, mean_pool, max_pool, penultimate = models.define_model(
            x, False, "MTT_musicnn", 50)
        probs = tf.nn.sigmoid(logits)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, mn.checkpoint_dir())
            out = sess.run({"max_pool": max_pool, "mean_pool": mean_pool,
                            "penultimate": penultimate, "logits": logits, "probs": probs},
                           feed_dict={x: batch})
    return out


# Dot-product lengths along the deepest path (timbral 7x67, midend 7x561 + 2 x 7x64,
# backend dense 1506 and 200). Float32 summation of n terms errs by at most n * u * sum|terms|
# (u = 2^-24, the worst case, no cancellation); the per-layer errors add along the path and
# batch norm, ReLU, max/mean pooling are 1-Lipschitz up to the BN scale applied to value
# and error alike. So |port - TF| <= N u * (the layer's magnitude), N = the sum below
# (~7000, i.e. 4.2e-4 relative); the sigmoid's slope is at most 1/4, so probabilities
# get a quarter of the logits' bound. Measured: ~3e-6 relative, 1% of the bound (TF with
# oneDNN and XLA sum in different orders); a swapped 'same' padding split, BN epsilon
# 1e-5 or a swapped max/mean interleave each exceed it 2000-fold or more.
_PATH_TERMS = 7 * 67 + 7 * 561 + 2 * 7 * 64 + 1506 + 200
_REL_TOL = _PATH_TERMS * 2.0 ** -24


def test_port_matches_tensorflow_running_musicnns_graph(monkeypatch):
    clip = np.concatenate([_piano_like(6.5), _white_noise(3.5, seed=1) * 0.5])
    batch = mn.patches(mn.log_mel(clip, SR))
    assert batch.shape == (3, mn.PATCH_FRAMES, mn.N_MELS)
    ref = _tf_reference(batch, monkeypatch)
    ours = {k: np.asarray(v) for k, v in mn._forward(mn.params(), batch).items()}
    for layer in ("max_pool", "mean_pool", "penultimate", "logits"):
        scale = max(1.0, float(np.abs(ref[layer]).max()))
        diff = float(np.abs(ours[layer] - ref[layer]).max())
        assert diff <= _REL_TOL * scale, (layer, diff, _REL_TOL * scale)
    logit_scale = max(1.0, float(np.abs(ref["logits"]).max()))
    assert np.abs(ours["probs"] - ref["probs"]).max() <= 0.25 * _REL_TOL * logit_scale
    # and the public API, patch by patch, gives the same embedding and tag probabilities
    np.testing.assert_allclose(mn.embed(clip, SR), ref["penultimate"], rtol=0,
                               atol=_REL_TOL * max(1.0, float(np.abs(ref["penultimate"]).max())))
    np.testing.assert_allclose(mn.tag_probs(clip, SR), ref["probs"].mean(0), rtol=0,
                               atol=0.25 * _REL_TOL * logit_scale)


# ------------------------------------------------------------------ (2) the mel frontend

def test_slaney_filterbank_centres_and_unit_area():
    fb = mn.slaney_mel_filterbank()
    assert fb.shape == (mn.N_FFT // 2 + 1, 96)
    # Slaney mel: linear (200/3 Hz per mel) below 1 kHz = 15 mel; 8 kHz is
    # 15 + 27 ln(8) / ln(6.4) = 45.245 mel; 98 edges evenly spaced in mel, so below 1 kHz
    # band i peaks at (i + 1) * 45.245 / 97 * 200 / 3 Hz = (i + 1) * 31.097 Hz.
    step_hz = (15 + 27 * np.log(8) / np.log(6.4)) / 97 * 200 / 3
    bin_hz = mn.SAMPLE_RATE / mn.N_FFT
    for i in (10, 20, 30):
        centre = (i + 1) * step_hz
        # the filter's largest weight sits on the FFT bin nearest its centre
        assert abs(np.argmax(fb[:, i]) * bin_hz - centre) <= bin_hz / 2 + 1e-6
    # area normalisation: each triangle integrates to 1 over Hz (wide filters, where the
    # bin sampling of the triangle is accurate)
    wide = slice(60, 96)
    np.testing.assert_allclose(fb[:, wide].sum(0) * bin_hz, 1.0, rtol=0.02)


def test_pure_tone_lands_in_its_band_and_shapes_match_musicnn():
    step_hz = (15 + 27 * np.log(8) / np.log(6.4)) / 97 * 200 / 3
    f = 16 * step_hz  # band 15's centre, 497.6 Hz
    t = np.arange(3 * mn.SAMPLE_RATE) / mn.SAMPLE_RATE
    feats = mn.log_mel(0.5 * np.sin(2 * np.pi * f * t), mn.SAMPLE_RATE)
    # 3 s at 16 kHz, hop 256, centred frames: 1 + 48000 // 256 = 188 frames; musicnn's
    # patch is librosa.time_to_frames(3) + 1 = 187 frames, so exactly one patch
    assert feats.shape == (188, 96)
    assert mn.patches(feats).shape == (1, 187, 96)
    profile = feats[2:-2].mean(0)
    assert int(np.argmax(profile)) == 15
    assert profile[15] > profile[[5, 25, 40, 80]].max() + 2.0  # log10 units
    # silence is log10(1) = 0 everywhere; a resampled 24 kHz tone peaks in the same band
    assert np.abs(mn.log_mel(np.zeros(SR), SR)).max() == 0.0
    t24 = np.arange(3 * SR) / SR
    assert int(np.argmax(mn.log_mel(0.5 * np.sin(2 * np.pi * f * t24), SR)[2:-2].mean(0))) == 15


def test_short_clip_is_repeat_padded_to_one_patch():
    feats = np.arange(50 * 96, dtype=np.float32).reshape(50, 96)
    p = mn.patches(feats)
    assert p.shape == (1, 187, 96)
    np.testing.assert_array_equal(p[0, 50:100], feats)


# ------------------------------------------------------------------ (3) the KL

def test_kl_of_a_set_with_itself_is_zero():
    probs = np.random.default_rng(0).uniform(0.01, 0.99, (7, 50))
    for mode in ("normalized", "bernoulli"):
        assert tag_kl.kl_divergence(probs, probs, mode) == pytest.approx(0.0, abs=1e-12)
    # normalized: proportional tag profiles are one distribution
    assert tag_kl.kl_divergence(probs * 0.5, probs, "normalized") == pytest.approx(0.0, abs=1e-12)
    assert tag_kl.kl_divergence(probs * 0.5, probs, "bernoulli") > 0.1


def test_kl_closed_forms():
    ref = np.array([[0.5, 0.5], [0.2, 0.2]])
    gen = np.array([[0.25, 0.75], [0.2, 0.2]])
    # normalized: pair 0 is [1/2, 1/2] against [1/4, 3/4]; pair 1 is identical
    kl0 = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    np.testing.assert_allclose(tag_kl.pairwise_kl(ref, gen), [kl0, 0.0], atol=1e-12)
    assert tag_kl.kl_divergence(ref, gen) == pytest.approx(kl0 / 2, abs=1e-12)
    # bernoulli: per tag p log(p/q) + (1-p) log((1-p)/(1-q)), summed over the two tags
    b = lambda p, q: p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))  # noqa: E731
    np.testing.assert_allclose(tag_kl.pairwise_kl(ref, gen, "bernoulli"),
                               [b(0.5, 0.25) + b(0.5, 0.75), 0.0], atol=1e-12)
    with pytest.raises(ValueError):
        tag_kl.kl_divergence(ref, gen[:1])


# ------------------------------------------------------------------ (4) tagging sanity

def test_piano_like_tone_and_noise_get_different_tags():
    tone, noise = mn.tag_probs(_piano_like(6.5), SR), mn.tag_probs(_white_noise(6.5), SR)
    assert tone.shape == noise.shape == (50,) and len(mn.MTT_TAGS) == 50
    piano = mn.MTT_TAGS.index("piano")
    top_noise = [t for t, _ in mn.top_tags(noise, 5)]
    assert "piano" not in top_noise
    assert tone[piano] > 3 * noise[piano]
    assert mn.top_tags(tone, 1)[0][0] != top_noise[0]
    assert tag_kl.kl_divergence(tone[None], noise[None]) > 0.2
    e = mn.clip_embedding(_piano_like(6.5), SR)
    assert e.shape == (200,) and np.isfinite(e).all()


def test_missing_wheel_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "musicnn", None)  # import musicnn -> ImportError
    with pytest.raises(ImportError, match=r"pip install --no-deps musicnn==0\.1\.0"):
        mn.checkpoint_dir()
