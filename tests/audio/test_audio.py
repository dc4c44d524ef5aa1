"""Audio utilities: band-limited resampling, downmix, loudness, features."""
import numpy as np
import pytest

from mufm.audio import decode, features, loudness
from mufm.audio.resample import downmix, resample


def _sine(freq, sr, seconds=1.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


def test_resample_keeps_in_band_tones_and_removes_out_of_band_ones():
    y = resample(_sine(1000, 44100), 44100, 24000)
    assert len(y) == 24000 and abs(_peak_hz(y, 24000) - 1000) < 2
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01
    # 15 kHz is above the 12 kHz Nyquist of 24 kHz: a naive decimator would alias it to 9 kHz
    z = resample(_sine(15000, 48000), 48000, 24000)
    assert np.sqrt(np.mean(z[1000:-1000] ** 2)) < 1e-3


def test_downmix_averages_channels():
    x = np.stack([np.ones(10), -np.ones(10), np.full(10, 0.5), np.full(10, 0.5)], axis=1)
    # (1 - 1 + 0.5 + 0.5) / 4: every partial sum and the quotient are exact in binary.
    np.testing.assert_array_equal(downmix(x), np.full(10, 0.25))


def test_loudness_normalisation_hits_target_with_peak_cap():
    x = _sine(440, 24000, 3.0, amp=0.05)
    y, gain_db = loudness.normalize(x, 24000, target_lufs=-20.0)
    assert abs(loudness.integrated_lufs(y, 24000) + 20.0) < 0.2 and gain_db > 0
    spike = x.copy()
    spike[100] = 0.9
    z, _ = loudness.normalize(spike, 24000, target_lufs=-10.0)
    # The capped gain is computed in float64 (~1e-16); the fp32 product x * gain rounds
    # once (u): 2 u covers both.
    assert np.abs(z).max() <= loudness.PEAK_CEILING * (1 + 2 * 2.0 ** -24)


def test_log_mel_and_chroma():
    x = _sine(440, 24000, 2.0)
    m = features.log_mel(x, 24000, n_fft=1024, hop=240, n_mels=64)
    assert m.shape[1] == 64 and m.shape[0] > 190 and np.isfinite(m).all()
    c = features.chroma(x, 24000)
    assert int(np.argmax(c)) == 9 and c[9] > 0.9  # A
    c2 = features.chroma(_sine(261.63, 24000, 2.0) + _sine(329.63, 24000, 2.0), 24000)
    assert set(np.argsort(c2)[-2:]) == {0, 4}  # C and E


def test_log_mel_is_the_one_the_codec_loss_and_metric_compute_in_jax():
    """features.log_mel (numpy) and ln(spectral.mel_spectrogram + LOG_MEL_FLOOR) (JAX: the
    codec's mel loss and the mel distance) are one definition: equal up to fp32 rounding.
    A different window, padding, filterbank, magnitude or floor moves them apart by far more."""
    import jax.numpy as jnp

    from mufm.layers.spectral import mel_spectrogram

    u = 2.0 ** -24  # fp32 unit roundoff
    rng = np.random.default_rng(0)
    x = (0.1 * rng.normal(size=(3, 4800))).astype(np.float32)
    x[2] = 0.0  # silence: only the floors and the magnitude's eps are left
    for n_fft in (64, 256, 2048):
        hop = n_fft // 4
        ours = features.log_mel(x, 24000, n_fft=n_fft, hop=hop, n_mels=64)
        jax_mel = mel_spectrogram(jnp.asarray(x), sample_rate=24000, n_fft=n_fft, hop=hop, n_mels=64)
        theirs = np.asarray(jnp.log(jax_mel + features.LOG_MEL_FLOOR))
        assert ours.shape == theirs.shape == (3, 1 + 4800 // hop, 64)
        # The bound, from an exact (float64) reference: a radix-2 FFT of n points is within
        # 7 log2(n) u ||X||_2 of exact (Higham, Accuracy and Stability, 24.1: log2(n) eta,
        # eta = mu + gamma_4 (sqrt 2 + mu) ~ 6.7 u), plus 2 u ||X|| for the rounded window
        # and product, and that bounds each bin's |X_k|. A band sums n_bins non-negative
        # terms (n_bins u of the band) after a rounded square, sum and sqrt (3 u). Each of
        # the two fp32 implementations has that error; ln adds u |ln| for each, and d ln =
        # d mel / mel.
        mel_fb = features.mel_filterbank(24000, n_fft, 64).astype(np.float64)
        padded = np.pad(x.astype(np.float64), [(0, 0), (n_fft // 2, n_fft // 2)], mode="reflect")
        idx = np.arange(ours.shape[1])[:, None] * hop + np.arange(n_fft)[None, :]
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
        spec = np.fft.rfft(padded[:, idx] * window, axis=-1)
        mel64 = np.sqrt(np.abs(spec) ** 2 + features.MAGNITUDE_EPS) @ mel_fb
        frame_norm = np.linalg.norm(spec, axis=-1, keepdims=True)
        dmel = (7 * np.log2(n_fft) + 2) * u * frame_norm * mel_fb.sum(0) + (n_fft // 2 + 4) * u * mel64
        bound = 2 * dmel / (mel64 - 2 * dmel + features.LOG_MEL_FLOOR) + 2 * u * np.abs(ours)
        np.testing.assert_array_less(np.abs(ours.astype(np.float64) - theirs), bound)
        np.testing.assert_allclose(ours, np.log(mel64 + features.LOG_MEL_FLOOR), atol=bound.max())


@pytest.mark.parametrize("x,kw,reason,needle", [
    (np.zeros((480,), np.float32), dict(sample_rate=44100), "wrong_sample_rate", "44100 Hz"),
    (np.array(["a", "b"]), {}, "not_numeric", "numeric"),
    (np.zeros((2, 3, 4), np.float32), {}, "wrong_shape", "[samples, channels]"),
    (np.zeros((480,), np.float32), dict(batched=True), "wrong_shape", "[batch, samples]"),
    (np.zeros((0, 2), np.float32), {}, "no_frames", "empty"),
    (np.ones((480,), np.int16), {}, "integer_pcm", "int16"),
    (np.array([0.1, np.nan, 0.2, np.inf], np.float32), {}, "nan_or_inf", "2 NaN/Inf samples (first at sample 1)"),
    (np.full((480, 2), 1e-5, np.float32), dict(silence_peak=1e-4), "digital_silence", "1e-05"),
])
def test_waveform_problem_names_each_problem(x, kw, reason, needle):
    problem = decode.waveform_problem(x, **kw)
    assert problem.reason == reason and needle in problem.detail, problem


def test_waveform_problem_passes_usable_audio_and_silence_unless_asked():
    x = 0.1 * np.ones((480, 2), np.float32)
    assert decode.waveform_problem(x, sample_rate=24000, silence_peak=1e-4) is None
    assert decode.waveform_problem(np.zeros((2, 480), np.float64), batched=True) is None
    assert decode.waveform_problem(np.zeros(480), silence_peak=1e-4).reason == "digital_silence"
