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
    # Make the noise orthogonal to x so the expected value is exact (in float64: x's own
    # fp32 mean and square sum would be off by ~1e-7, i.e. 5e-8 dB).
    xc = x.astype(np.float64) - x.astype(np.float64).mean()
    noise -= (noise @ xc) / np.sum(xc ** 2) * xc
    noise *= np.sqrt(np.sum(xc ** 2) / np.sum(noise ** 2) / 10.0)
    # si_snr works in float64: each of its sums of n terms is within n u64 of exact, and
    # the construction above leaves the noise orthogonal to and 10 dB under x to as
    # much; 10 log10 turns a relative error e of the ratio into 4.34 e dB, and ~4 such
    # sums enter it.
    tol_db = 10 / np.log(10) * 4 * 4 * x.size * 2.0 ** -53
    assert am.si_snr(x, x + noise) == pytest.approx(10.0, rel=0, abs=tol_db)
    batch = am.si_snr(np.stack([x, x]), np.stack([x + noise, 2 * x]))
    assert batch.shape == (2,) and batch[0] == pytest.approx(10.0, rel=0, abs=tol_db)


def test_mel_distance_on_known_signals():
    x = _tones()[None]
    # The same ops on the same samples: exactly 0.
    assert float(am.mel_distance(x, x)[0]) == 0.0
    # A gain of 2 shifts every well-above-floor log-mel band by ln 2; near-empty bands
    # (between the tones, empty filters at small windows) shift less. Rounding on top:
    # each fp32 ln is within u |ln| (|ln| <= |ln 1e-5| = 11.5 at the floor) and its
    # argument within a few u; the mean over N bands and frames adds N u relative.
    d = float(am.mel_distance(x, 2 * x)[0])
    n_terms = max(64 * (1 + x.shape[-1] // (w // 4)) for w in (64, 2048))
    assert 0.3 < d <= np.log(2) * (1 + n_terms * 2.0 ** -24) + 4 * 11.6 * 2.0 ** -24
    assert float(am.mel_distance(x, x + 0.01 * np.random.default_rng(1).normal(size=x.shape))[0]) > 0


def test_mulaw_baseline_spends_its_bitrate_and_keeps_low_band():
    low, high = _tones(freqs=(200.0,)), _tones(freqs=(3000.0,))
    y, spent = cb.mulaw_roundtrip(low, SR, 6000.0, bits=4)
    # It keeps round(n * 1500 / 24000) samples of 4 bits: within half a sample of 1500/s.
    assert spent == pytest.approx(6000.0, rel=0.5 / 1500) and y.shape == low.shape
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
