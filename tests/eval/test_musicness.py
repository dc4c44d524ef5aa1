"""The music-vs-noise statistics (mufm/eval/musicness.py) on signals whose answer is known."""
import numpy as np
import pytest

from mufm.eval import musicness as m

SR = 24_000
SECONDS = 20
T = np.arange(SECONDS * SR) / SR


def clicks(period_s=0.5):
    """A decaying 440 Hz note every `period_s`: a perfectly steady beat."""
    x = np.zeros_like(T)
    n = SR // 10
    note = np.sin(2 * np.pi * 440 * T[:n]) * np.exp(-30 * T[:n])
    for start in np.arange(0, SECONDS - 0.1, period_s):
        i = int(start * SR)
        x[i:i + n] += note
    return x


def test_white_noise_flatness_is_e_to_minus_gamma():
    # Every bin of white noise's periodogram is exponential, so E ln(bin / mean) = -gamma
    # (Euler's constant): flatness e^-gamma = -2.507 dB. Per frame the mean of ~650 such
    # logs (pairs correlated by the Hann window) has std ~1.28 / sqrt(325) = 0.07 nepers;
    # the median over ~470 frames is within ~0.005 nepers (0.02 dB): 0.1 dB is 5 sigma.
    x = 0.1 * np.random.default_rng(0).standard_normal(len(T))
    expected = 10 * np.log10(np.exp(-np.euler_gamma))
    assert m.spectral_flatness_db(x, SR) == pytest.approx(expected, abs=0.1)


def test_a_tone_is_tonal_and_a_beat_is_regular_noise_is_neither():
    noise = m.clip_stats(0.1 * np.random.default_rng(1).standard_normal(len(T)), SR)
    tone = m.clip_stats(0.3 * np.sin(2 * np.pi * 440 * T), SR)
    beat = m.clip_stats(clicks(), SR)
    assert tone.flatness_db < -60 and beat.flatness_db < -20 < noise.flatness_db
    # A strictly periodic envelope correlates with itself at its period: ~1 (the detrended
    # edges cost a little). Noise's envelope has no memory: each lag's normalised
    # autocorrelation is ~N(0, 1.6 / n) for n = 2000 envelope frames (Bartlett, with the
    # overlapping frames' short-lag correlation); the max over the lags stays under 6 sigma.
    assert beat.onset_regularity > 0.95
    n = SECONDS * m.ENVELOPE_HZ
    assert abs(noise.onset_regularity) < 6 * np.sqrt(1.6 / n)
    assert tone.onset_regularity < 6 * np.sqrt(1.6 / n)  # steady: no onsets to repeat
    assert beat.rms_dbfs > -30 and noise.silent_fraction == 0


def test_silence_has_no_flatness_and_is_reported_silent():
    s = m.clip_stats(np.zeros(len(T)), SR)
    assert np.isnan(s.flatness_db) and s.silent_fraction == 1.0 and s.onset_regularity == 0.0
    summary = m.summarize([s, m.clip_stats(clicks(), SR)])
    assert summary["clips"] == 2 and np.isfinite(summary["flatness_db"]["median"])


def test_bad_audio_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        m.clip_stats(np.full(len(T), np.nan), SR)
    with pytest.raises(ValueError, match="more than 3 s"):
        m.clip_stats(np.zeros(2 * SR), SR)
    with pytest.raises(ValueError, match="mono"):
        m.clip_stats(np.zeros((2, len(T))), SR)


def test_verdict_places_the_generated_set_between_noise_and_music():
    beat = [clicks(), clicks(0.6)]
    noise = m.white_noise_like(beat, seed=0)
    sets = {"generated": m.summarize(m.set_stats(beat[:1], SR)),
            "white noise": m.summarize(m.set_stats(noise, SR)),
            "corpus": m.summarize(m.set_stats(beat, SR))}
    v = m.verdict(sets)
    assert v["flatness_db"]["nearer_music"] and v["onset_regularity"]["nearer_music"]
    sets["generated"] = sets["white noise"]
    v = m.verdict(sets)
    assert not v["onset_regularity"]["nearer_music"]
    assert v["onset_regularity"]["position_noise_to_music"] == 0.0
    table = m.summary_table(sets)
    assert table.count("\n") == 4 and "| corpus | 2 |" in table
    assert "position_random_codes_to_codec_music" not in v["flatness_db"]
    # With the codec's sets: 0 at random codes, 1 at the codec's music (here the beat).
    sets[m.CODEC_RANDOM], sets[m.CODEC_MUSIC] = sets["white noise"], sets["corpus"]
    sets["generated"] = m.summarize(m.set_stats(beat, SR))
    v = m.verdict(sets)
    assert v["flatness_db"]["position_random_codes_to_codec_music"] == 1.0
    assert "1.00 from the codec on random codes" in m.verdict_line(v)


def test_white_noise_matches_each_clips_length_and_level():
    clips = [0.5 * np.sin(2 * np.pi * 220 * T[:SR * 4]), 0.01 * np.ones(SR * 5)]
    for c, n in zip(clips, m.white_noise_like(clips)):
        assert len(n) == len(c)
        assert np.sqrt(np.mean(n.astype(np.float64) ** 2)) == pytest.approx(
            np.sqrt(np.mean(c ** 2)), rel=0.05)  # 1 / sqrt(2 x 96k samples) << 5 %
