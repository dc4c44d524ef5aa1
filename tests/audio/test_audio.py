"""Audio utilities: band-limited resampling, downmix, loudness, features."""
import numpy as np

from mufm.audio import features, loudness
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
    np.testing.assert_allclose(downmix(x), np.full(10, 0.25))


def test_loudness_normalisation_hits_target_with_peak_cap():
    x = _sine(440, 24000, 3.0, amp=0.05)
    y, gain_db = loudness.normalize(x, 24000, target_lufs=-20.0)
    assert abs(loudness.integrated_lufs(y, 24000) + 20.0) < 0.2 and gain_db > 0
    spike = x.copy()
    spike[100] = 0.9
    z, _ = loudness.normalize(spike, 24000, target_lufs=-10.0)
    assert np.abs(z).max() <= loudness.PEAK_CEILING + 1e-6


def test_log_mel_and_chroma():
    x = _sine(440, 24000, 2.0)
    m = features.log_mel(x, 24000, n_fft=1024, hop=240, n_mels=64)
    assert m.shape[1] == 64 and m.shape[0] > 190 and np.isfinite(m).all()
    c = features.chroma(x, 24000)
    assert int(np.argmax(c)) == 9 and c[9] > 0.9  # A
    c2 = features.chroma(_sine(261.63, 24000, 2.0) + _sine(329.63, 24000, 2.0), 24000)
    assert set(np.argsort(c2)[-2:]) == {0, 4}  # C and E
