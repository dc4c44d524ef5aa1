"""Codec metrics on known signals, the baselines, and the comparison table."""
import json

import numpy as np
import pytest

from mufm.codec import baselines as cb
from mufm.eval import audio_metrics as am

SR = 24_000


def _tones(seconds=1.0, freqs=(300.0, 1200.0)):
    t = np.arange(int(SR * seconds)) / SR
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def test_si_snr_on_known_signals():
    x = _tones()
    assert am.si_snr(x, 3.0 * x) > 100  # gain-blind
    rng = np.random.default_rng(0)
    noise = rng.normal(size=x.shape)
    noise -= noise.mean()
    # Make the noise orthogonal to x so the expected value is exact.
    noise -= (noise @ (x - x.mean())) / np.sum((x - x.mean()) ** 2) * (x - x.mean())
    noise *= np.sqrt(np.sum((x - x.mean()) ** 2) / np.sum(noise ** 2) / 10.0)
    assert am.si_snr(x, x + noise) == pytest.approx(10.0, abs=1e-3)
    batch = am.si_snr(np.stack([x, x]), np.stack([x + noise, 2 * x]))
    assert batch.shape == (2,) and batch[0] == pytest.approx(10.0, abs=1e-3)


def test_mel_distance_on_known_signals():
    x = _tones()[None]
    assert float(am.mel_distance(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
    # A gain of 2 shifts every well-above-floor log-mel band by ln 2; near-empty bands
    # (between the tones, empty filters at small windows) shift less.
    d = float(am.mel_distance(x, 2 * x)[0])
    assert 0.3 < d <= np.log(2) + 1e-4
    assert float(am.mel_distance(x, x + 0.01 * np.random.default_rng(1).normal(size=x.shape))[0]) > 0


def test_mulaw_baseline_spends_its_bitrate_and_keeps_low_band():
    low, high = _tones(freqs=(200.0,)), _tones(freqs=(3000.0,))
    y, spent = cb.mulaw_roundtrip(low, SR, 6000.0, bits=4)
    assert spent == pytest.approx(6000.0, rel=1e-3) and y.shape == low.shape
    assert am.si_snr(low, y) > 10  # 200 Hz survives a 1.5 kHz sample rate at 4 bits
    y_high, _ = cb.mulaw_roundtrip(high, SR, 6000.0, bits=4)
    assert np.std(y_high) < 0.05 * np.std(high)  # 3 kHz is above its Nyquist


@pytest.mark.skipif(not cb.opus_available(), reason="ffmpeg with libopus not installed")
def test_opus_baseline_runs_via_ffmpeg():
    rng = np.random.default_rng(0)
    x = (_tones(2.0) + 0.05 * rng.normal(size=2 * SR)).astype(np.float32)
    y6, spent6 = cb.opus_roundtrip(x, SR, 6000)
    y32, spent32 = cb.opus_roundtrip(x, SR, 32000)
    assert y6.shape == x.shape and np.all(np.isfinite(y6))
    assert 5000 < spent6 < 9000 and 30000 < spent32 < 36000
    # Aligned (no codec delay left) and better with more bits.
    assert am.si_snr(x, y32) > 10
    assert am.mel_distance(x[None], y32[None])[0] < am.mel_distance(x[None], y6[None])[0]


def test_comparison_table_written_as_markdown_and_json(tmp_path):
    refs = [_tones(0.5), _tones(0.5, (500.0,))]
    recon = {kbps: [r * 0.9 for r in refs] for kbps in (1.5, 3.0, 6.0)}
    coded = cb.code_baselines(refs, sorted(recon), sample_rate=SR, names=("mulaw",))
    rows = cb.comparison_rows(refs, recon, sample_rate=SR, baselines=coded)
    assert [(r["method"], r["kbps"]) for r in rows][:2] == [("codec", 1.5), ("mulaw", 1.5)]
    assert len(rows) == 6 and rows[0]["si_snr_db"] > 100  # a pure gain change
    md, js = cb.write_comparison_table(rows, str(tmp_path), notes="synthetic")
    text = open(md).read()
    assert "| codec | 1.5 |" in text and "synthetic" in text
    assert json.load(open(js))["rows"][1]["method"] == "mulaw"
    assert cb.bitrate_levels(1.5) == 3 and cb.bitrate_levels(6) == 12
