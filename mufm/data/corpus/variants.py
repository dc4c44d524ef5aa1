"""Rendering variants: an instrument palette per part, a tempo factor and a transposition.

Palettes list General MIDI programs (0-based) from the highest part to the lowest; a
score with more parts than the palette reuses its lowest entry. Solo melodies get solo
palettes, part music gets ensembles. With ``CorpusConfig.transpositions`` set, every
variant but the first (which keeps the written key) is transposed by a number of
semitones drawn from it.
"""
from __future__ import annotations

import dataclasses
import random

from mufm.data.corpus.config import CorpusConfig
from mufm.data.corpus.works import Work, stable_hash

# name -> [(instrument name, GM program), ...] high to low
ENSEMBLES = {
    "string_quartet": [("violin",
                        40), ("violin", 40), ("viola", 41), ("cello", 42), ("contrabass", 43)],
    "organ": [("church organ", 19)],
    "piano": [("piano", 0)],
    "brass": [("trumpet",
               56), ("trumpet", 56), ("french horn", 60), ("trombone", 57), ("tuba", 58)],
    "woodwinds": [("flute", 73), ("oboe", 68), ("clarinet", 71), ("bassoon", 70)],
    "choir": [("choir", 52)],
    "guitar": [("nylon-string guitar", 24)],
    "harpsichord": [("harpsichord", 6)],
    "string_orchestra": [("string ensemble", 48)],
}
SOLOS = {
    "piano": [("piano", 0)],
    "violin": [("violin", 40)],
    "flute": [("flute", 73)],
    "fiddle": [("fiddle", 110)],
    "accordion": [("accordion", 21)],
    "recorder": [("recorder", 74)],
    "oboe": [("oboe", 68)],
    "clarinet": [("clarinet", 71)],
    "guitar": [("nylon-string guitar", 24)],
    "harp": [("harp", 46)],
    "trumpet": [("trumpet", 56)],
    "pan_flute": [("pan flute", 75)],
}


@dataclasses.dataclass(frozen=True)
class Variant:
    variant_id: str
    palette: str
    programs: tuple[tuple[str, int], ...]   # one (instrument, GM program) per part, top down
    tempo_scale: float                       # applied to every metronome mark of the score
    transpose: int = 0                       # semitones, applied to every note

    def to_json(self) -> dict:
        return {"variant_id": self.variant_id, "palette": self.palette,
                "programs": [list(p) for p in self.programs], "tempo_scale": self.tempo_scale,
                "transpose": self.transpose}

    @classmethod
    def from_json(cls, d: dict) -> "Variant":
        return cls(d["variant_id"], d["palette"], tuple(tuple(p) for p in d["programs"]),
                   d["tempo_scale"], d.get("transpose", 0))


def programs_for(palette: list[tuple[str, int]], n_parts: int) -> tuple[tuple[str, int], ...]:
    return tuple(palette[min(i, len(palette) - 1)] for i in range(max(n_parts, 1)))


def choose_variants(work: Work, cfg: CorpusConfig, n_parts: int | None = None) -> list[Variant]:
    """``cfg.variants_per_work`` distinct palettes, tempo factors and (with
    ``cfg.transpositions``) transpositions, fixed by (seed, work id)."""
    n_parts = n_parts or work.n_parts
    rng = random.Random(stable_hash(cfg.seed, "variants", work.work_id))
    table = SOLOS if n_parts == 1 else ENSEMBLES
    names = sorted(table)
    rng.shuffle(names)
    out = []
    for k in range(cfg.variants_per_work):
        name = names[k % len(names)]
        lo, hi = cfg.tempo_scale
        scale = round(rng.uniform(lo, hi), 3)
        out.append(Variant(f"v{k}_{name}", name, programs_for(table[name], n_parts), scale))
    if cfg.transpositions:
        # A stream of its own: palettes and tempi are the same with transposition on or off.
        trng = random.Random(stable_hash(cfg.seed, "transpose", work.work_id))
        for k in range(1, len(out)):
            t = int(trng.choice(cfg.transpositions))
            if t:
                v = out[k]
                out[k] = dataclasses.replace(v, variant_id=f"{v.variant_id}_t{t:+d}", transpose=t)
    return out
