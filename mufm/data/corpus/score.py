"""music21 side of the build: parse a work, strip repeats, analyse it, apply a variant, write MIDI.

Runs inside the builder's worker processes (music21 is imported only here and in
`works.py`); nothing in this module imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import math

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
    """Sets one instrument per part, rewrites the tempo marks and transposes (in place; call
    per variant).

    Every existing MetronomeMark is removed; the plan is re-inserted into the first part with
    its first tempo set to ``bpm`` and later changes scaled by the same factor. Every note
    moves by ``variant.transpose`` semitones (key signatures with it).
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
    if variant.transpose:
        s.transpose(variant.transpose, inPlace=True)


def to_midi(s: stream.Score) -> midi.MidiFile:
    return translate.streamToMidiFile(s)


def beat_grid(s: stream.Score) -> tuple[list[float], list[float]]:
    """Quarter-note offsets of the beats and of the downbeats of ``s`` as its MIDI plays it.

    Repeats are expanded exactly when music21's MIDI writer expands them (whenever the
    score has measures), so the offsets line up with the MIDI's ticks. A beat is the
    time signature's beat (``beatDuration``: a dotted quarter in 6/8); a pickup bar's
    beats are counted from its missing start (``paddingLeft``), so an eighth-note
    upbeat is not a beat and the first downbeat is where the first full bar begins.
    Scores without measures get their first time signature's grid from 0 (quarters if none).
    """
    played = s.expandRepeats() if s[stream.Measure] else s
    first = played.parts[0]
    measures = list(first.getElementsByClass(stream.Measure))
    beats: list[float] = []
    downbeats: list[float] = []
    if not measures:
        ts = next(iter(played.recurse().getElementsByClass(meter.TimeSignature)), None)
        step = float(ts.beatDuration.quarterLength) if ts else 1.0
        per_bar = int(round(ts.barDuration.quarterLength / step)) if ts else 0
        end = float(played.highestTime)
        k = 0
        while k * step < end - 1e-9:
            beats.append(k * step)
            if per_bar and k % per_bar == 0:
                downbeats.append(k * step)
            k += 1
        return beats, downbeats
    ts = None
    carry = 0.0  # where in its bar the previous measure stopped, if it stopped short
    for m in measures:
        ts = (m.timeSignature or ts or m.getContextByClass(meter.TimeSignature)
              or meter.TimeSignature("4/4"))
        step = float(ts.beatDuration.quarterLength)
        bar_length = float(ts.barDuration.quarterLength)
        pad = float(m.paddingLeft)
        start = float(m.getOffsetBySite(first))
        length = float(m.duration.quarterLength)
        # A bar split by a repeat sign is two short measures, and parsers (ABC) often do
        # not mark the second half's padding: it continues the first half's bar.
        if pad == 0 and carry > 0 and carry + length <= bar_length + 1e-9:
            pad = carry
        k = math.ceil(pad / step - 1e-9)
        while k * step - pad < length - 1e-9:
            beats.append(start + k * step - pad)
            if k == 0:
                downbeats.append(beats[-1])
            k += 1
        carry = pad + length if pad + length < bar_length - 1e-9 else 0.0
    return beats, downbeats


def write_midi(mf: midi.MidiFile, path: str) -> None:
    mf.open(path, "wb")
    try:
        mf.write()
    finally:
        mf.close()
