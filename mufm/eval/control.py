"""Key and tempo of audio, and how well they match what a caption asked for.

- **key**: the clip's chroma (`mufm.audio.features.chroma`, magnitude per pitch class
  summed over time) correlated with the 24 rotations of a major and a minor key profile;
  the best is the key. Profiles: Aarden-Essen (Aarden 2003, pitch-class frequencies of
  the Essen folk songs; the default) or Krumhansl-Kessler's probe-tone ratings (Krumhansl
  1990). On the `medium` corpus's 153 held-out clips (20 s centre crops) Aarden-Essen finds
  the captioned key exactly for 0.608 (MIREX weighted 0.741), Krumhansl-Kessler for 0.340
  (0.555): its strong fifth and third ratings pull the estimate to the dominant and the
  relative key on tunes that are mostly scale steps. Scored against the requested key
  exactly and with MIREX's weighted score (1 same key, 0.5 a fifth above in the same mode,
  0.3 the relative key, 0.2 the parallel key, 0 else; as mir_eval.key.weighted_score).
- **tempo**: the spectral-flux onset envelope at 100 Hz (`mufm.eval.musicness`), its
  normalised autocorrelation at lags of 40 to 240 bpm weighted by a log-normal prior
  centred on 120 bpm with one octave of spread (as librosa's tempo estimate: without it a
  periodic track's half and double tempos score as high as its tempo), the best lag
  refined by a parabola through its neighbours. Scored with MIREX's Acc1 (within 4 %),
  Acc2 (within 4 % of 1, 2, 1/2, 3 or 1/3 times the tempo: octave errors allowed) and
  the tempo bin (edges `TEMPO_BINS`).
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from mufm.audio.features import chroma
from mufm.eval.musicness import ENVELOPE_HZ, envelope_autocorrelation, onset_envelope

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# (major, minor) profiles, tonic first.
PROFILES = {
    "aarden": (np.array([17.7661, 0.145624, 14.9265, 0.160186, 19.8049, 11.3587, 0.291248,
                         22.062, 0.145624, 8.15494, 0.232998, 4.95122]),
               np.array([18.2648, 0.737619, 14.0499, 16.8599, 0.702494, 14.4362, 0.702494,
                         18.6161, 4.56621, 1.93186, 7.37619, 1.75623])),
    "krumhansl": (np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
                  np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])),
}
TEMPO_RANGE_BPM = (40.0, 240.0)
TEMPO_PRIOR_BPM = 120.0
TEMPO_TOLERANCE = 0.04
TEMPO_BINS = (60.0, 90.0, 120.0, 150.0)  # bin i: [edge i-1, edge i); 5 bins


class Key(NamedTuple):
    tonic: int  # pitch class, C = 0
    mode: str  # "major" or "minor"

    def __str__(self) -> str:
        return f"{PITCH_CLASSES[self.tonic]} {self.mode}"


def parse_key(text: str) -> Key:
    """"D major", "F# minor", "Bb minor", "c minor" -> Key."""
    m = re.fullmatch(r"\s*([A-Ga-g])([#b♯♭]?)\s*(major|minor|maj|min)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a key like 'F# minor'")
    tonic = _NAMES[m.group(1).upper()] + {"#": 1, "♯": 1, "b": -1, "♭": -1}.get(m.group(2), 0)
    return Key(tonic % 12, "major" if m.group(3).startswith("maj") else "minor")


def key_scores(profile: np.ndarray, profiles: str = "aarden") -> np.ndarray:
    """Pearson correlation of a 12-bin chroma with each key's profile: [2, 12] (major,
    minor) x tonic."""
    if profiles not in PROFILES:
        raise ValueError(f"key profiles {profiles!r}: use one of {sorted(PROFILES)}")
    profile = np.asarray(profile, np.float64)
    out = np.zeros((2, 12))
    for m, template in enumerate(PROFILES[profiles]):
        for tonic in range(12):
            out[m, tonic] = np.corrcoef(profile, np.roll(template, tonic))[0, 1]
    return np.nan_to_num(out, nan=-1.0)


def estimate_key(audio: np.ndarray, sample_rate: int, profiles: str = "aarden") -> Key:
    scores = key_scores(chroma(np.asarray(audio, np.float64), sample_rate), profiles)
    mode, tonic = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return Key(int(tonic), ("major", "minor")[mode])


def key_weighted_score(estimate: Key, reference: Key) -> float:
    """MIREX's weighted key score of `estimate` against `reference`."""
    if estimate == reference:
        return 1.0
    up = (estimate.tonic - reference.tonic) % 12
    if estimate.mode == reference.mode and up == 7:
        return 0.5
    if estimate.mode != reference.mode:
        # C major's relative is A minor (9 up); A minor's is C major (3 up).
        if up == (9 if reference.mode == "major" else 3):
            return 0.3
        if up == 0:
            return 0.2
    return 0.0


def estimate_tempo(audio: np.ndarray, sample_rate: int) -> float:
    """Beats per minute; NaN when the clip has no onsets or is shorter than 2 beat periods
    of the slowest tempo."""
    env = onset_envelope(np.asarray(audio, np.float64), sample_rate)
    lo = int(np.floor(60 * ENVELOPE_HZ / TEMPO_RANGE_BPM[1]))
    hi = int(np.ceil(60 * ENVELOPE_HZ / TEMPO_RANGE_BPM[0]))
    if len(env) <= 2 * hi:
        return float("nan")
    ac = envelope_autocorrelation(env, lo, hi)
    if ac is None:
        return float("nan")
    lags = np.arange(lo, hi + 1)
    bpm = 60.0 * ENVELOPE_HZ / lags
    weighted = np.maximum(ac, 0) * np.exp(-0.5 * np.log2(bpm / TEMPO_PRIOR_BPM) ** 2)
    i = int(np.argmax(weighted))
    lag = float(lags[i])
    if 0 < i < len(ac) - 1:  # the vertex of the parabola through the peak and neighbours
        a, b, c = ac[i - 1], ac[i], ac[i + 1]
        denom = a - 2 * b + c
        if denom < 0:
            lag += 0.5 * (a - c) / denom
    return 60.0 * ENVELOPE_HZ / lag


def tempo_bin(bpm: float) -> int:
    return int(np.searchsorted(TEMPO_BINS, bpm, side="right"))


def tempo_accuracy(estimate: float, reference: float) -> dict:
    """{"acc1", "acc2", "bin"}: each 0 or 1 (a NaN estimate scores 0)."""
    if not np.isfinite(estimate):
        return {"acc1": 0.0, "acc2": 0.0, "bin": 0.0}
    near = lambda factor: abs(estimate - factor * reference) <= TEMPO_TOLERANCE * factor * reference
    return {"acc1": float(near(1.0)),
            "acc2": float(any(near(f) for f in (1.0, 2.0, 0.5, 3.0, 1 / 3))),
            "bin": float(tempo_bin(estimate) == tempo_bin(reference))}


def main(argv=None) -> int:
    """python -m mufm.eval.control --corpus_dir=DIR [--split test] [--seconds 20]
    [--profiles aarden]: the estimators on a corpus's real clips against their captions
    (the ceiling of the evaluation's control rows), and against a shuffled clip's caption
    (chance)."""
    import argparse

    from mufm.eval.prompts import corpus_prompts
    from mufm.semantic.tokens import read_crop

    p = argparse.ArgumentParser(prog="python -m mufm.eval.control", description=main.__doc__)
    p.add_argument("--corpus_dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--profiles", default="aarden", choices=sorted(PROFILES))
    args = p.parse_args(argv)
    prompts = corpus_prompts(args.corpus_dir, args.split)
    rows = []
    for p_ in prompts:
        start = max(0.0, ((p_.duration_s or args.seconds) - args.seconds) / 2)
        x = read_crop(p_.audio, start, args.seconds)
        rows.append((estimate_key(x, 24_000, args.profiles), estimate_tempo(x, 24_000)))
    from mufm.eval.job import control_scores

    real = control_scores(rows, prompts)
    chance = control_scores(rows, prompts[1:] + prompts[:1])
    print(f"{len(prompts)} {args.split} clips, {args.seconds:g} s centre crops, "
          f"{args.profiles} profiles")
    for name, r in (("captions", real), ("shuffled captions", chance)):
        print(f"{name:18s} key exact {r['key_exact']:.3f} weighted {r['key_weighted']:.3f} | "
              f"tempo acc1 {r['tempo_acc1']:.3f} acc2 {r['tempo_acc2']:.3f} bin {r['tempo_bin']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
