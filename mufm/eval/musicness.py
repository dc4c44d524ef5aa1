"""Is generated audio music-like rather than noise? Signal statistics that separate the
two without any trained model, measured on generated audio beside reference sets.

Per clip (mono, any rate; frames of 2048 samples at 24 kHz scale with the rate):
- **spectral flatness**: per frame, geometric over arithmetic mean of the power spectrum
  between 60 Hz and 8 kHz (where the corpus's notes and their first harmonics lie), the
  median over the clip's non-silent frames, in dB. White noise: ~0.56 = -2.5 dB (the mean
  of ln of an exponential variable is -0.577, so e^-0.577); the corpus's synthesised
  notes: -40 dB and below. Lower is more tonal; dB because tonal audio spans decades.
- **onset regularity**: the spectral-flux onset envelope (half-wave rectified first
  difference of the 64-band log-mel at 100 Hz, summed over bands, its 1 s moving mean
  removed), then its normalised autocorrelation's largest value at lags of 0.25 to 1.5 s
  (40 to 240 beats per minute). Noise: an envelope without memory, so ~0 plus the
  1/sqrt(frames) spread; a steady beat: a clear peak. Higher is more rhythmic.
- **level**: RMS in dBFS and the fraction of frames under -60 dBFS (silence would pass
  the flatness test, so it is reported, not hidden).

`compare` puts sets side by side (generated, white noise at the generated RMS, the codec
decoding uniformly random codes, the codec's reconstructions of corpus clips, the corpus
clips themselves): the codec sets bound what the cascade can reach through that codec, and
random codes show what the codec makes of tokens that carry no music. `summary_table`
prints medians with their interquartile range.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Sequence

import numpy as np

from mufm.audio.features import log_mel, power_spectrogram

CODEC_RANDOM, CODEC_MUSIC = "codec(random codes)", "codec(corpus)"
FLAT_BAND_HZ = (60.0, 8000.0)
ENVELOPE_HZ = 100
BEAT_LAGS_S = (0.25, 1.5)
SILENT_DBFS = -60.0


@dataclasses.dataclass(frozen=True)
class ClipStats:
    flatness_db: float
    onset_regularity: float
    rms_dbfs: float
    silent_fraction: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _frame_n(sample_rate: int) -> int:
    """2048 samples at 24 kHz (85 ms), the nearest power of two at other rates."""
    return int(2 ** round(np.log2(2048 * sample_rate / 24_000)))


def _dbfs(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, 1e-20))


def spectral_flatness_db(x: np.ndarray, sample_rate: int) -> float:
    """Median per-frame spectral flatness over non-silent frames in dB (nan if all are
    silent)."""
    n = _frame_n(sample_rate)
    spec = power_spectrogram(x, n, n // 2).astype(np.float64)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    band = spec[:, (freqs >= FLAT_BAND_HZ[0]) & (freqs <= min(FLAT_BAND_HZ[1], sample_rate / 2))]
    # A Hann window's mean square is 3/8: the frame's RMS from its spectrum (Parseval).
    frame_power = spec.sum(1) * 2 / (n * n * 0.375)
    loud = _dbfs(frame_power) > SILENT_DBFS
    if not loud.any():
        return float("nan")
    band = band[loud] + 1e-30
    flat = np.log(band).mean(1) - np.log(band.mean(1))  # ln(geometric / arithmetic mean)
    return float(10.0 / np.log(10.0) * np.median(flat))


def onset_envelope(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Spectral flux at ENVELOPE_HZ with its 1 s moving mean removed: [frames]."""
    hop = sample_rate // ENVELOPE_HZ
    mel = log_mel(x, sample_rate, n_fft=_frame_n(sample_rate) // 2, hop=hop, n_mels=64)
    flux = np.maximum(np.diff(mel, axis=0), 0.0).sum(1).astype(np.float64)
    k = min(ENVELOPE_HZ, len(flux))
    if k < 1:
        return flux
    trend = np.convolve(flux, np.ones(k) / k, mode="same")
    return flux - trend


def onset_regularity(x: np.ndarray, sample_rate: int) -> float:
    """The largest normalised autocorrelation of the onset envelope at beat lags."""
    env = onset_envelope(x, sample_rate)
    lo, hi = (int(round(s * ENVELOPE_HZ)) for s in BEAT_LAGS_S)
    if len(env) <= 2 * hi:
        raise ValueError(f"onset regularity needs more than {2 * BEAT_LAGS_S[1]:g} s of audio, "
                         f"got {len(x) / sample_rate:.2f} s")
    ac = envelope_autocorrelation(env, lo, hi)
    return float(ac.max()) if ac is not None else 0.0


def envelope_autocorrelation(env: np.ndarray, lo: int, hi: int) -> np.ndarray | None:
    """Normalised autocorrelation of an envelope at lags lo..hi (frames), or None for a
    constant envelope."""
    env = env - env.mean()
    energy = float(env @ env)
    if energy <= 0:
        return None
    # Each lag's sum is over len - lag products: rescaled so every lag is an average, and a
    # long lag is not favoured or penalised by having fewer terms.
    ac = np.array([env[:-lag] @ env[lag:] / (len(env) - lag) for lag in range(lo, hi + 1)])
    return ac / (energy / len(env))


def clip_stats(x: np.ndarray, sample_rate: int) -> ClipStats:
    x = np.asarray(x, np.float64)
    if x.ndim != 1:
        raise ValueError(f"clip_stats takes mono audio [n], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("audio has NaN or infinite samples")
    n = _frame_n(sample_rate)
    frames = max(1, 1 + (len(x) - n) // (n // 2))
    power = np.array([np.mean(x[i * (n // 2):i * (n // 2) + n] ** 2) for i in range(frames)])
    return ClipStats(flatness_db=spectral_flatness_db(x, sample_rate),
                     onset_regularity=onset_regularity(x, sample_rate),
                     rms_dbfs=float(_dbfs(np.mean(x ** 2))),
                     silent_fraction=float(np.mean(_dbfs(power) <= SILENT_DBFS)))


def set_stats(clips: Iterable[np.ndarray], sample_rate: int) -> list[ClipStats]:
    return [clip_stats(c, sample_rate) for c in clips]


def white_noise_like(clips: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Gaussian white noise of each clip's length and RMS."""
    rng = np.random.default_rng(seed)
    out = []
    for c in clips:
        rms = float(np.sqrt(np.mean(np.asarray(c, np.float64) ** 2))) or 0.1
        out.append((rms * rng.standard_normal(len(c))).astype(np.float32))
    return out


FIELDS = ("flatness_db", "onset_regularity", "rms_dbfs", "silent_fraction")


def summarize(stats: Sequence[ClipStats]) -> dict:
    """{field: {median, q25, q75}} over a set (nan-aware: a silent clip has no flatness)."""
    out = {"clips": len(stats)}
    for f in FIELDS:
        v = np.array([getattr(s, f) for s in stats], np.float64)
        v = v[np.isfinite(v)]
        out[f] = ({"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                   "q75": float(np.percentile(v, 75))} if len(v) else None)
    return out


def summary_table(sets: dict) -> str:
    """Markdown: one row per set ({name: summarize(...)}), median [q25, q75] per field."""
    head = "| audio | clips | spectral flatness dB (lower: tonal) | onset regularity (higher: " \
           "rhythmic) | RMS dBFS | silent frames |"
    rows = [head, "|---|---|---|---|---|---|"]
    for name, s in sets.items():
        cells = []
        for f, fmt in zip(FIELDS, ("{:.1f}", "{:.3f}", "{:.1f}", "{:.2f}")):
            v = s[f]
            cells.append("-" if v is None else
                         f"{fmt.format(v['median'])} [{fmt.format(v['q25'])}, {fmt.format(v['q75'])}]")
        rows.append(f"| {name} | {s['clips']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def verdict(sets: dict, generated: str = "generated", noise: str = "white noise",
            music: str = "corpus") -> dict:
    """Per field (flatness and regularity; level is not a property of music): whether the
    generated set's median lies nearer the music set's than the noise set's, where it
    lies from noise (0) to music (1), and, with the codec sets, from the codec decoding
    random codes (0) to the codec reconstructing music (1): what the stage LMs' tokens add
    over tokens that carry nothing, through the same codec."""
    out = {}
    for f in ("flatness_db", "onset_regularity"):
        g, n, m = (sets[k][f]["median"] for k in (generated, noise, music))
        out[f] = {"nearer_music": bool(abs(g - m) < abs(g - n)),
                  "position_noise_to_music": _position(g, n, m)}
        if {CODEC_RANDOM, CODEC_MUSIC} <= set(sets):
            r, c = sets[CODEC_RANDOM][f]["median"], sets[CODEC_MUSIC][f]["median"]
            out[f]["position_random_codes_to_codec_music"] = _position(g, r, c)
    return out


def _position(x: float, zero: float, one: float) -> float:
    return float((x - zero) / (one - zero)) if one != zero else float("nan")


def verdict_line(v: dict) -> str:
    parts = []
    for k, d in v.items():
        text = (f"{k}: {'nearer the corpus' if d['nearer_music'] else 'nearer noise'} "
                f"({d['position_noise_to_music']:.2f} from noise to corpus")
        if "position_random_codes_to_codec_music" in d:
            text += (f"; {d['position_random_codes_to_codec_music']:.2f} from the codec on random "
                     f"codes to the codec on corpus codes")
        parts.append(text + ")")
    return "; ".join(parts)


def dumps(sets: dict, extra: dict | None = None) -> str:
    return json.dumps({"sets": sets, "verdict": verdict(sets) if {"generated", "white noise",
                                                                 "corpus"} <= set(sets) else None,
                       **(extra or {})}, indent=2)


# -- the command line -------------------------------------------------------------------------

def _corpus_crops(corpus_dir: str, split: str, max_clips: int, seconds: float,
                  sample_rate: int) -> list[np.ndarray]:
    from mufm.audio.io import read
    from mufm.data.corpus.manifest import read_manifest

    records = [r for r in read_manifest(corpus_dir) if r["split"] == split]
    if not records:
        raise ValueError(f"{corpus_dir}: no clips in split {split!r}")
    picks = [records[int(i)] for i in np.linspace(0, len(records) - 1,
                                                  min(max_clips, len(records))).round()]
    out = []
    for r in picks:
        start = max(0.0, (r["attributes"]["duration_s"] - seconds) / 2)
        x, rate = read(f"{corpus_dir}/{r['audio']}", start, seconds)
        if rate != sample_rate:
            raise ValueError(f"{r['audio']}: {rate} Hz, the generated audio is {sample_rate} Hz")
        out.append(x.mean(1))
    return out


def _codec_sets(codec_dir: str, crops: list[np.ndarray], seed: int) -> dict:
    """The codec's reconstructions of `crops` and its decoding of uniformly random codes of
    the same frames."""
    from mufm.codec.restore import load_codec
    from mufm.codec.tokenizer import decode_chunked, encode_chunked

    codec = load_codec(codec_dir)
    cfg = codec.configs["codec"]
    rec, rand = [], []
    rng = np.random.default_rng(seed)
    for c in crops:
        codes = np.asarray(encode_chunked(*codec.parts, c[None]))
        rec.append(np.asarray(decode_chunked(*codec.parts, codes))[0, :len(c)])
        noise = rng.integers(0, cfg.codebook_size, codes.shape)
        rand.append(np.asarray(decode_chunked(*codec.parts, noise))[0, :len(c)])
    return {CODEC_MUSIC: rec, CODEC_RANDOM: rand}


def main(argv=None) -> int:
    import argparse
    import os
    import sys

    from mufm.audio.io import read

    p = argparse.ArgumentParser(prog="python -m mufm.eval.musicness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wavs", nargs="+", help="generated audio files")
    p.add_argument("--corpus_dir", required=True, help="a built corpus: its clips are the music set")
    p.add_argument("--codec", default=None, help="codec run: adds its reconstructions and random codes")
    p.add_argument("--split", default="test")
    p.add_argument("--max_clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="corpus crop length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the table (.md) and figures (.json) here")
    args = p.parse_args(argv)
    try:
        generated, rates = [], set()
        for path in args.wavs:
            x, rate = read(path)
            generated.append(x.mean(1))
            rates.add(rate)
        if len(rates) != 1:
            raise ValueError(f"generated files have different rates: {sorted(rates)}")
        rate = rates.pop()
        crops = _corpus_crops(args.corpus_dir, args.split, args.max_clips, args.seconds, rate)
        clips = {"generated": generated, "white noise": white_noise_like(generated, args.seed)}
        if args.codec:
            clips.update(_codec_sets(args.codec, crops, args.seed))
        clips["corpus"] = crops
        stats = {name: set_stats(c, rate) for name, c in clips.items()}
        sets = {name: summarize(st) for name, st in stats.items()}
        # Each file on its own row too, when there are several.
        files = {f"  {os.path.basename(path)}": summarize([st])
                 for path, st in zip(args.wavs, stats["generated"])} if len(args.wavs) > 1 else {}
    except (ValueError, OSError) as e:
        print(f"python -m mufm.eval.musicness: error: {e}", file=sys.stderr)
        return 2
    table = summary_table({"generated": sets["generated"], **files,
                           **{k: v for k, v in sets.items() if k != "generated"}})
    print(table)
    print(verdict_line(verdict(sets)))
    for name in files:
        print(f"{name.strip()}: {verdict_line(verdict(dict(sets, **{name: files[name]}), name))}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        stem = os.path.splitext(args.out)[0]
        with open(stem + ".md", "w") as f:
            f.write(table + "\n")
        with open(stem + ".json", "w") as f:
            f.write(dumps(sets, {"files": {k.strip(): v for k, v in files.items()},
                                 "wavs": args.wavs, "corpus_dir": args.corpus_dir,
                                 "split": args.split, "codec": args.codec}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
