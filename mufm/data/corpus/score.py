"""music21 side of the build: parse a work, strip repeats, analyse it, apply a variant, write MIDI.

Runs inside the builder's worker processes (music21 is imported only here and in
`works.py`); nothing in this module imports TensorFlow.
"""
from __future__ import annotations

import dataclasses

from music21 import bar, corpus, instrument, key as m21key, meter, midi, repeat, spanner, stream, tempo
from music21.midi import translate

from mufm.data.corpus.config import collection_info
from mufm.data.corpus.variants import Variant
from mufm.data.corpus.works import Work


@dataclasses.dataclass
class ScoreFacts:
    """What captions need from the score itself (before any variant is applied)."""
    key_tonic: str                   # e.g. "F#", "B-" is written "Bb"
    mode: str                        # "major" / "minor" (music21's Krumhansl analysis)
    time_signature: str | None       # first time signature, e.g. "3/4"
    base_bpm: float                  # first metronome mark in quarter notes per minute
    has_tempo_mark: bool
    n_parts: int
    quarter_length: float
    pitch_class_weights: list[float]  # duration-weighted pitch-class histogram (C..B), sums to 1


def parse(work: Work) -> stream.Score:
    s = corpus.parse(work.source_path, number=work.number, forceSource=True)
    if isinstance(s, stream.Opus):
        s = s.scores[0]
    if not isinstance(s, stream.Score):
        sc = stream.Score()
        sc.insert(0, s)
        s = sc
    if not s.parts:
        raise ValueError("score has no parts")
    return s


def strip_repeats(s: stream.Score) -> None:
    """Removes repeat barlines, volta brackets and D.C./D.S. marks so MIDI export is linear."""
    for m in s.recurse().getElementsByClass(stream.Measure):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = bar.Barline("regular")
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = bar.Barline("regular")
    for el in list(s.recurse().getElementsByClass((repeat.RepeatExpression,
                                                   spanner.RepeatBracket))):
        site = el.activeSite
        if site is not None:
            site.remove(el)
    for sp in list(s.spannerBundle.getByClass(spanner.RepeatBracket)):
        s.spannerBundle.remove(sp)


def _tonic_name(k: m21key.Key) -> str:
    return k.tonic.name.replace("-", "b")


def analyse(s: stream.Score) -> ScoreFacts:
    k = s.analyze("key")
    ts = next(iter(s.recurse().getElementsByClass(meter.TimeSignature)), None)
    marks = list(s.recurse().getElementsByClass(tempo.MetronomeMark))
    qpm = None
    for mm in marks:
        q = mm.getQuarterBPM()
        if q:
            qpm = float(q)
            break
    weights = [0.0] * 12
    for n in s.recurse().notes:
        for p in getattr(n, "pitches", ()):
            weights[p.pitchClass] += float(n.duration.quarterLength)
    total = sum(weights) or 1.0
    return ScoreFacts(
        key_tonic=_tonic_name(k), mode=str(k.mode), time_signature=ts.ratioString if ts else None,
        base_bpm=qpm or 0.0, has_tempo_mark=qpm is not None, n_parts=len(s.parts),
        quarter_length=float(s.highestTime), pitch_class_weights=[w / total for w in weights])


def tempo_plan(s: stream.Score) -> list[tuple[float, float]]:
    """(offset in quarters, quarter bpm) of every tempo change, from the score's marks."""
    out = []
    for start, _end, mm in s.metronomeMarkBoundaries():
        q = mm.getQuarterBPM()
        if q and (not out or abs(out[-1][1] - q) > 1e-6):
            out.append((float(start), float(q)))
    return out


def bpm_for(facts: ScoreFacts, collection: str, scale: float, bounds: tuple[int, int]) -> int:
    """The variant's opening tempo in quarter bpm: stated (or collection default) x scale, bounded."""
    base = facts.base_bpm if facts.has_tempo_mark else collection_info(collection).default_bpm
    return int(min(max(round(base * scale), bounds[0]), bounds[1]))


def apply_variant(s: stream.Score, variant: Variant, plan: list[tuple[float, float]],
                  bpm: int) -> None:
    """Sets one instrument per part and rewrites the tempo marks (in place; call per variant).

    Every existing MetronomeMark is removed; the plan is re-inserted into the first part with
    its first tempo set to ``bpm`` and later changes scaled by the same factor.
    """
    for el in list(s.recurse().getElementsByClass((tempo.MetronomeMark, tempo.TempoText))):
        if el.activeSite is not None:
            el.activeSite.remove(el)
    for part, (name, program) in zip(s.parts, variant.programs):
        for el in list(part.recurse().getElementsByClass(instrument.Instrument)):
            if el.activeSite is not None:
                el.activeSite.remove(el)
        inst = instrument.Instrument()
        inst.instrumentName = name
        inst.midiProgram = int(program)
        part.insert(0, inst)
    plan = plan or [(0.0, float(bpm))]
    factor = bpm / plan[0][1]
    first = s.parts[0]
    for i, (offset, q) in enumerate(plan):
        mm = tempo.MetronomeMark(number=bpm if i == 0 else round(q * factor, 3))
        first.insert(offset, mm)


def to_midi(s: stream.Score) -> midi.MidiFile:
    return translate.streamToMidiFile(s)


def midi_seconds(mf: midi.MidiFile) -> float:
    """Length of a MIDI file in seconds, from its tempo map and its last event."""
    tpq = mf.ticksPerQuarterNote or 1024
    tempos = []  # (tick, microseconds per quarter)
    last_tick = 0
    for track in mf.tracks:
        tick = 0
        for ev in track.events:
            if isinstance(ev, midi.DeltaTime):
                tick += ev.time
                continue
            last_tick = max(last_tick, tick)
            if ev.type == midi.MetaEvents.SET_TEMPO and ev.data:
                tempos.append((tick, int.from_bytes(
                    bytes(ev.data[:3]) if isinstance(ev.data, (bytes, bytearray))
                    else bytes(ev.data[:3]), "big")))
    tempos.sort()
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, (0, 500000))
    seconds, prev_tick, us = 0.0, 0, tempos[0][1]
    for tick, new_us in tempos[1:]:
        if tick >= last_tick:
            break
        seconds += (tick - prev_tick) / tpq * us / 1e6
        prev_tick, us = tick, new_us
    return seconds + (last_tick - prev_tick) / tpq * us / 1e6


def write_midi(mf: midi.MidiFile, path: str) -> None:
    mf.open(path, "wb")
    try:
        mf.write()
    finally:
        mf.close()
