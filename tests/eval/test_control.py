"""Key and tempo estimation (mufm/eval/control.py) on rendered scales and click tracks."""
import numpy as np
import pytest

from mufm.eval import control as c

SR = 24_000
MAJOR_STEPS, MINOR_STEPS = (0, 2, 4, 5, 7, 9, 11, 12), (0, 2, 3, 5, 7, 8, 11, 12)  # harmonic minor


def tone(midi, seconds):
    t = np.arange(int(seconds * SR)) / SR
    f = 440.0 * 2 ** ((midi - 69) / 12)
    return sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3)) * np.exp(-2 * t)


def scale(key: c.Key, base=60, note_s=0.3):
    """The scale up and down, then its tonic triad held: a key a listener hears at once."""
    steps = MAJOR_STEPS if key.mode == "major" else MINOR_STEPS
    root = base + key.tonic
    notes = [tone(root + s, note_s) for s in steps + steps[::-1]]
    third = 4 if key.mode == "major" else 3
    chord = sum(tone(root + s, 1.5) for s in (0, third, 7, 12))
    return 0.1 * np.concatenate(notes + [chord])


@pytest.mark.parametrize("profiles", sorted(c.PROFILES))
@pytest.mark.parametrize("mode", ["major", "minor"])
def test_every_key_of_a_rendered_scale_is_found(mode, profiles):
    for tonic in range(12):
        key = c.Key(tonic, mode)
        assert c.estimate_key(scale(key), SR, profiles) == key, str(key)
    with pytest.raises(ValueError, match="key profiles"):
        c.estimate_key(scale(key), SR, "temperly")


def test_keys_parse_and_score_as_mirex_does():
    assert c.parse_key("F# minor") == c.Key(6, "minor") == c.parse_key("Gb min")
    assert c.parse_key("Bb major") == c.Key(10, "major") and str(c.Key(10, "major")) == "Bb major"
    with pytest.raises(ValueError, match="not a key"):
        c.parse_key("H major")
    C, G, Am, Cm, Em = (c.parse_key(k) for k in ("C major", "G major", "A minor", "C minor",
                                                 "E minor"))
    assert c.key_weighted_score(C, C) == 1.0
    assert c.key_weighted_score(G, C) == 0.5 and c.key_weighted_score(C, G) == 0.0  # fifth above
    assert c.key_weighted_score(Am, C) == 0.3 and c.key_weighted_score(C, Am) == 0.3
    assert c.key_weighted_score(Cm, C) == 0.2 and c.key_weighted_score(Em, C) == 0.0


def clicks(bpm, seconds=20.0):
    x = np.zeros(int(seconds * SR))
    n = SR // 20
    note = tone(81, n / SR)[:n] * np.exp(-60 * np.arange(n) / SR)
    for start in np.arange(0, seconds - 0.1, 60.0 / bpm):
        i = int(start * SR)
        x[i:i + n] += note[:len(x) - i]
    return 0.3 * x


@pytest.mark.parametrize("bpm", [72, 100, 120, 150])
def test_tempo_of_a_click_track(bpm):
    """Within MIREX's 4 %: the lag grid is 10 ms, and the parabola refines it well inside
    that (at 150 bpm one lag step alone is 2.5 %)."""
    estimate = c.estimate_tempo(clicks(bpm), SR)
    assert abs(estimate - bpm) <= 0.04 * bpm, estimate
    scores = c.tempo_accuracy(estimate, bpm)
    assert scores["acc1"] == scores["acc2"] == 1.0


def test_tempo_scores_allow_octave_errors_only_in_acc2():
    assert c.tempo_accuracy(240.0, 120.0) == {"acc1": 0.0, "acc2": 1.0, "bin": 0.0}
    assert c.tempo_accuracy(118.0, 121.0) == {"acc1": 1.0, "acc2": 1.0, "bin": 0.0}  # an edge
    assert c.tempo_accuracy(100.0, 120.0) == {"acc1": 0.0, "acc2": 0.0, "bin": 0.0}
    assert c.tempo_accuracy(float("nan"), 120.0)["acc2"] == 0.0
    assert [c.tempo_bin(b) for b in (50, 60, 89.9, 119, 130, 200)] == [0, 1, 1, 2, 3, 4]
    assert np.isnan(c.estimate_tempo(np.zeros(SR * 10), SR))  # no onsets
    assert np.isnan(c.estimate_tempo(clicks(120, 2.0), SR))  # too short
