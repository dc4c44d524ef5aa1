"""MidiCaps-style captions written from the score, plus the structured attributes behind them.

Every template states the key (``"F# minor"``) and the tempo in bpm literally, so the
caption and the attribute fields can never disagree; wording, order and the optional
facts (composer, region, era, length, title) vary by template.
"""
from __future__ import annotations

import random

from mufm.data.corpus.config import collection_info
from mufm.data.corpus.works import stable_hash

TEMPO_WORDS = (  # (upper bpm bound, Italian marking, English adjective)
    (60, "Largo", "very slow"), (76, "Adagio", "slow"), (108, "Andante", "moderate"),
    (120, "Moderato", "moderately fast"), (156, "Allegro", "fast"), (176, "Vivace", "lively"),
    (10_000, "Presto", "very fast"))


def tempo_word(bpm: float) -> tuple[str, str]:
    for hi, italian, english in TEMPO_WORDS:
        if bpm < hi:
            return italian, english
    return TEMPO_WORDS[-1][1:]


def length_word(seconds: float) -> str:
    return ("short" if seconds < 30 else "medium-length" if seconds < 90
            else "long" if seconds < 300 else "very long")


def texture_for(collection: str, n_parts: int) -> str:
    t = collection_info(collection).texture
    solo = any(w in (t or "") for w in ("solo", "tune", "air", "melody"))
    if t and ((n_parts == 1) == solo or t in ("piano piece", "piano rag")):
        return t
    if n_parts == 1:
        return "solo melody"
    return {2: "two-part piece", 3: "three-part piece", 4: "four-part piece"}.get(
        n_parts, f"{n_parts}-part piece")


def join_names(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def distinct(seq):
    return list(dict.fromkeys(seq))


# How a transposed key is spelled: the usual key signature for each tonic pitch class
# (C=0), fewest accidentals, flats on the usual flat keys.
TONIC_NAMES = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def pitch_class(tonic: str) -> int:
    """Pitch class of a tonic as the captions write it ("F#", "Bb", "C##")."""
    return (_LETTER_PC[tonic[0]] + tonic.count("#") - tonic.count("b")) % 12


def transposed_tonic(tonic: str, mode: str, semitones: int) -> str:
    """The tonic after transposing by ``semitones``; untransposed keys keep the score's
    spelling (music21's analysis), transposed ones the usual key-signature name."""
    if not semitones:
        return tonic
    return TONIC_NAMES.get(mode, TONIC_NAMES["major"])[(pitch_class(tonic) + semitones) % 12]


def attributes(*, work, facts, variant, bpm: int, duration_s: float) -> dict:
    """The structured fields stored next to the caption (see README, "caption fields")."""
    info = collection_info(work.collection)
    italian, english = tempo_word(bpm)
    instruments = distinct(name for name, _ in variant.programs)
    tonic = transposed_tonic(facts.key_tonic, facts.mode, variant.transpose)
    return {
        "key": f"{tonic} {facts.mode}",
        "key_tonic": tonic,
        "mode": facts.mode,
        "transpose": int(variant.transpose),
        "bpm": int(bpm),
        "tempo_word": italian,
        "tempo_adjective": english,
        "time_signature": facts.time_signature or "",
        "instruments": instruments,
        "palette": variant.palette,
        "tempo_scale": float(variant.tempo_scale),
        "composer": work.composer or "",
        "collection": info.label,
        "region": work.region or "",
        "era": info.era,
        "texture": texture_for(work.collection, facts.n_parts),
        "n_parts": int(facts.n_parts),
        "title": work.title or "",
        "duration_s": round(float(duration_s), 3),
        "length_word": length_word(duration_s),
    }


def _origin(a: dict) -> str:
    if a["composer"]:
        return f"composed by {a['composer']}"
    if a["region"]:
        return f"a {a['era']} tune from {a['region']}"
    return f"from the {a['collection']}"


def _meter(a: dict) -> str:
    return f"in {a['time_signature']} time" if a["time_signature"] else "in free meter"


def _templates(a: dict, ins: str):
    art = "An" if a["tempo_adjective"][0] in "aeiou" else "A"
    return [
        lambda: (f"{art} {a['tempo_adjective']} {a['texture']} in {a['key']} played by {ins}, "
                 f"{_meter(a)} at {a['bpm']} bpm ({a['tempo_word']}). It is {_origin(a)} and lasts "
                 f"about {round(a['duration_s'])} seconds."),
        lambda: (f"Performed by {ins}: a {a['length_word']} {a['era']} {a['texture']} "
                 f"in {a['key']} at {a['bpm']} beats per minute, {_meter(a)}; {_origin(a)}."),
        lambda: (f"This {a['texture']} from the {a['collection']} is set in {a['key']}. "
                 f"The tempo is {a['tempo_word']}, {a['bpm']} bpm, the time signature "
                 f"{a['time_signature'] or 'free'}, and the instrumentation {ins}."),
        lambda: (f"{a['era'].capitalize()} music: a {a['texture']} for {ins} in {a['key']}, "
                 f"{a['tempo_adjective']} at {a['bpm']} bpm and {_meter(a)}"
                 + (f", titled \"{a['title']}\"" if a["title"] else "") + "."),
        lambda: (f"{a['key'][0].upper() + a['key'][1:]}, {a['bpm']} bpm, "
                 f"{a['time_signature'] or 'free meter'}: "
                 f"a {a['tempo_adjective']} {a['texture']} played by {ins}, {_origin(a)}"
                 + (f", {a['region']}" if a["region"] and a["composer"] else "") + "."),
    ]


ENSEMBLE_PHRASES = {  # how captions name a palette that plays every part on one instrument
    "choir": "a choir", "piano": "a piano", "organ": "a church organ",
    "guitar": "a guitar ensemble",
    "harpsichord": "a harpsichord", "string_orchestra": "a string orchestra",
}


def instrument_phrase(attrs: dict) -> str:
    names = attrs["instruments"] or ["piano"]
    if attrs["n_parts"] > 1 and len(names) == 1:
        return ENSEMBLE_PHRASES.get(attrs["palette"], f"an ensemble of {names[0]}s")
    if attrs["palette"] == "string_quartet" and attrs["n_parts"] > 1:
        return "a string quartet (" + join_names(names) + ")"
    if len(names) == 1:
        return ("an " if names[0][0] in "aeiou" else "a ") + names[0]
    return join_names(names)


def caption(attrs: dict, seed: int, clip_id: str) -> tuple[str, int]:
    """(caption, template index), the template drawn from (seed, clip id)."""
    templates = _templates(attrs, instrument_phrase(attrs))
    k = random.Random(stable_hash(seed, "caption", clip_id)).randrange(len(templates))
    return templates[k](), k
