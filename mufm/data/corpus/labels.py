"""Note and beat labels of a rendered clip, read back from the MIDI file fluidsynth played.

Why from the MIDI: it is exactly what was rendered. Tempo scaling, expanded repeats,
transposition and instrument programs are all already applied there, and fluidsynth plays
it from t = 0, so MIDI seconds are the clip's audio seconds. Beats are the one thing a
MIDI file cannot say (a pickup bar is invisible in it), so they come from the score's
measures (`score.beat_grid`, in quarter notes) and are mapped through the same tempo map.

A clip's labels live next to its FLAC as ``audio/<work>/<variant>.labels.npz``:

- ``notes``: float32 ``[n, 5]``, one row per note, sorted by onset then pitch then part:
  ``onset_s, offset_s, pitch, program, part`` (MIDI pitch 0-127 as sounded, GM program
  0-127, part index 0 = the top part of the score, the variant's first instrument);
- ``beats``: float32 ``[m]``, seconds of every beat of the score's meter (compound meters
  beat in dotted quarters, as music21 counts them);
- ``downbeats``: float32 ``[k]``, the beats that start a bar.

Everything is cut at the clip's length: notes that start after it are dropped and ones
that ring past it end at it. npz rather than JSON: evaluation reads thousands of these as
arrays (``np.load``: no parsing, exact float32), and the writer fixes zip timestamps so a
resumed build still ends with byte-identical files. Reading needs only numpy.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile

import numpy as np

SUFFIX = ".labels.npz"
NOTE_COLUMNS = ("onset_s", "offset_s", "pitch", "program", "part")
DEFAULT_US_PER_QUARTER = 500000  # MIDI's tempo before the first SET_TEMPO (120 bpm)


@dataclasses.dataclass
class MidiNotes:
    """What a standard MIDI file holds that the labels need (times in ticks)."""
    ticks_per_quarter: int
    tempos: list[tuple[int, int]]   # (tick, microseconds per quarter), from tick 0, sorted
    notes: np.ndarray               # int64 [n, 5]: on_tick, off_tick, pitch, program, part
    last_tick: int                  # the last event of any track (end-of-track included)

    def __post_init__(self):
        self._starts = np.array([t for t, _ in self.tempos], dtype=np.int64)
        self._us = np.array([u for _, u in self.tempos], dtype=np.float64)
        self._at = np.zeros(len(self.tempos))  # seconds at each tempo change
        tpq = self.ticks_per_quarter
        for i in range(1, len(self.tempos)):  # segment after segment, as a player counts
            self._at[i] = (self._at[i - 1]
                           + (self._starts[i] - self._starts[i - 1]) / tpq * self._us[i - 1] / 1e6)

    def seconds(self, ticks) -> np.ndarray:
        """Seconds at ``ticks`` (array or scalar) through the tempo map."""
        ticks = np.asarray(ticks)
        i = np.searchsorted(self._starts, ticks, side="right") - 1
        return self._at[i] + (ticks - self._starts[i]) / self.ticks_per_quarter * self._us[i] / 1e6

    @property
    def length_s(self) -> float:
        return float(self.seconds(self.last_tick))


def _varlen(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        b = data[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, i


def read_midi(path: str) -> MidiNotes:
    """A small standard-MIDI-file reader (formats 0 and 1, ticks-per-quarter division).

    Notes are paired the way fluidsynth plays them, not per track: events of all tracks
    are taken in playing order (tick, then track, then file order), programs belong to
    channels, and a (channel, pitch) sounds at most once: a note-on ends the same pitch
    already sounding on its channel (fluidsynth releases it), a note-off (or note-on with
    velocity 0) ends the one sounding. That matters because music21 gives parts with the
    same instrument one channel (two violins), so a unison's first note-off silences
    both. A note belongs to the part whose track started it: track index, less one when
    the first track holds no notes (music21's conductor track; then one track per part,
    top part first). Notes still sounding at the end end with the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"MThd":
        raise ValueError(f"{path}: not a standard MIDI file")
    header_len = int.from_bytes(data[4:8], "big")
    n_tracks = int.from_bytes(data[10:12], "big")
    division = int.from_bytes(data[12:14], "big")
    if division & 0x8000:
        raise ValueError(f"{path}: SMPTE time division is not supported")
    pos = 8 + header_len
    tempos: list[tuple[int, int, int]] = []  # (tick, order in file, us per quarter)
    events: list[tuple[int, int, int, int, int, int]] = []  # tick, track, seq, status, a, b
    last_tick = 0
    for track in range(n_tracks):
        if data[pos:pos + 4] != b"MTrk":
            raise ValueError(f"{path}: bad track header at byte {pos}")
        end = pos + 8 + int.from_bytes(data[pos + 4:pos + 8], "big")
        i, tick, status = pos + 8, 0, 0
        while i < end:
            delta, i = _varlen(data, i)
            tick += delta
            last_tick = max(last_tick, tick)
            if data[i] & 0x80:
                status = data[i]
                i += 1
            if status == 0xFF:  # meta event
                kind = data[i]
                length, i = _varlen(data, i + 1)
                if kind == 0x51 and length >= 3:
                    tempos.append((tick, len(tempos), int.from_bytes(data[i:i + 3], "big")))
                i += length
                continue
            if status in (0xF0, 0xF7):  # sysex
                length, i = _varlen(data, i)
                i += length
                continue
            kind = status & 0xF0
            n_data = 1 if kind in (0xC0, 0xD0) else 2
            if kind in (0x80, 0x90, 0xC0):
                b = data[i + 1] if n_data == 2 else 0
                events.append((tick, track, len(events), status, data[i], b))
            i += n_data
        pos = end
    program = [0] * 16
    sounding: dict[tuple[int, int], tuple[int, int, int]] = {}  # (ch, pitch) -> on, prog, track
    notes_by_track: dict[int, list[tuple[int, int, int, int]]] = {}

    def end_note(key, tick):
        on, prog, track = sounding.pop(key)
        if tick > on:  # one replaced at its own onset never sounded
            notes_by_track.setdefault(track, []).append((on, tick, key[1], prog))

    for tick, track, _seq, status, a, b in sorted(events):
        kind, channel = status & 0xF0, status & 0x0F
        if kind == 0xC0:
            program[channel] = a
        elif (channel, a) in sounding:
            end_note((channel, a), tick)
        if kind == 0x90 and b > 0:
            sounding[(channel, a)] = (tick, program[channel], track)
    for key in list(sounding):
        end_note(key, last_tick)
    tempos.sort()  # by tick, then file order: the later of two changes at one tick wins
    tempo_map = [(t, u) for t, _, u in tempos]
    if not tempo_map or tempo_map[0][0] > 0:
        tempo_map.insert(0, (0, DEFAULT_US_PER_QUARTER))
    dedup: list[tuple[int, int]] = []
    for t, u in tempo_map:
        if dedup and dedup[-1][0] == t:
            dedup[-1] = (t, u)
        else:
            dedup.append((t, u))
    first_part = 1 if n_tracks > 1 and 0 not in notes_by_track else 0  # the conductor track
    notes = [n + (track - first_part,) for track, ns in notes_by_track.items() for n in ns]
    arr = np.array(sorted(notes), dtype=np.int64).reshape(-1, 5)
    return MidiNotes(division, dedup, arr, last_tick)


def clip_labels(midi: MidiNotes, beats_q, downbeats_q, duration_s: float) -> dict[str, np.ndarray]:
    """The label arrays of a clip of ``duration_s`` rendered from ``midi``.

    ``beats_q`` / ``downbeats_q`` are quarter-note offsets in the score as played
    (repeats expanded), i.e. MIDI ticks / ticks_per_quarter.
    """
    n = midi.notes
    onset = midi.seconds(n[:, 0]) if len(n) else np.zeros(0)
    offset = midi.seconds(n[:, 1]) if len(n) else np.zeros(0)
    notes = np.stack([onset, np.minimum(offset, duration_s), n[:, 2], n[:, 3], n[:, 4]], axis=1)
    notes = notes[onset < duration_s]
    notes = notes[np.lexsort((notes[:, 4], notes[:, 2], notes[:, 0]))]

    def grid(q):
        ticks = np.round(np.asarray(q, dtype=np.float64) * midi.ticks_per_quarter).astype(np.int64)
        t = midi.seconds(ticks) if len(ticks) else np.zeros(0)
        return t[t < duration_s]

    return {"notes": notes.astype(np.float32).reshape(-1, 5),
            "beats": grid(beats_q).astype(np.float32),
            "downbeats": grid(downbeats_q).astype(np.float32)}


def write_labels(path: str, labels: dict[str, np.ndarray]) -> None:
    """An ``np.load``-able .npz with fixed zip timestamps (same arrays, same bytes), atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=os.path.dirname(path))
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in sorted(labels):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(labels[name]), allow_pickle=False)
    os.replace(tmp, path)


def read_labels(corpus_dir: str, clip_id: str) -> dict[str, np.ndarray]:
    """``{"notes", "beats", "downbeats"}`` of a clip of a built corpus, by its clip id."""
    path = os.path.join(corpus_dir, "audio", clip_id + SUFFIX)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: the corpus was built without labels "
                                "(re-run `python -m mufm.data.corpus build` on it to add them)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def window(labels: dict[str, np.ndarray], start_s: float, seconds: float) -> dict[str, np.ndarray]:
    """Labels of the crop ``[start_s, start_s + seconds)``, in the crop's own time base.

    A seqio corpus example carries ``clip_id`` and ``crop_start`` (samples), so an
    evaluation gets its crop's notes as
    ``window(read_labels(corpus_dir, clip_id), crop_start / 24000, crop_samples / 24000)``.
    Notes sounding across the crop start begin at 0.
    """
    end = start_s + seconds
    n = labels["notes"]
    keep = (n[:, 0] < end) & (n[:, 1] > start_s)
    notes = n[keep].copy()
    notes[:, 0] = np.maximum(notes[:, 0] - start_s, 0.0)
    notes[:, 1] = np.minimum(notes[:, 1], end) - start_s
    out = {"notes": notes}
    for k in ("beats", "downbeats"):
        b = labels[k]
        out[k] = (b[(b >= start_s) & (b < end)] - start_s).astype(np.float32)
    return out
