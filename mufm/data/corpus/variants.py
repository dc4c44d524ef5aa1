"""Rendering variants: an instrument palette per part and a tempo factor, drawn per work.

Palettes list General MIDI programs (0-based) from the highest part to the lowest; a
score with more parts than the palette reuses its lowest entry. Solo melodies get solo
palettes, part music gets ensembles.
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

    def to_json(self) -> dict:
        return {"variant_id": self.variant_id, "palette": self.palette,
                "programs": [list(p) for p in self.programs], "tempo_scale": self.tempo_scale}

    @classmethod
    def from_json(cls, d: dict) -> "Variant":
        return cls(d["variant_id"], d["palette"], tuple(tuple(p) for p in d["programs"]),
                   d["tempo_scale"])


def programs_for(palette: list[tuple[str, int]], n_parts: int) -> tuple[tuple[str, int], ...]:
    return tuple(palette[min(i, len(palette) - 1)] for i in range(max(n_parts, 1)))


def choose_variants(work: Work, cfg: CorpusConfig, n_parts: int | None = None) -> list[Variant]:
    """``cfg.variants_per_work`` distinct palettes and tempo factors, fixed by (seed, work id)."""
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
    return out
