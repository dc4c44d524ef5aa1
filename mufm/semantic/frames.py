"""Musical labels per 25 Hz semantic frame, from a clip's note events (`.labels.npz`).

The corpus is rendered from scores, so every clip knows its notes exactly
(`mufm.data.corpus.labels`: rows ``onset_s, offset_s, pitch, program, part``). Frame i
of a semantic tokenizer covers samples [960 i, 960 (i + 1)) of 24 kHz audio, i.e. the
seconds [0.04 i, 0.04 (i + 1)). Per frame:

- **active notes**: a note is active in frame i when it sounds at the frame's centre,
  onset <= 0.04 (i + 0.5) < offset. The centre rule gives every note of at least one
  frame's length the frames it covers most of, never double-counts a frame at a note
  change (a note ending mid-frame and the next starting there: exactly one of them holds
  the centre) and needs no overlap threshold. A note shorter than 40 ms that holds no
  centre is in no frame.
- **pitch-class set**: a 12-bit mask, bit p set when a note of pitch class p (MIDI pitch
  % 12, C = 0) is active; 0 when none is.
- **bass**: the pitch class of the lowest active pitch; -1 when none is.
- **program**: the GM program (0-127) that plays the most active notes in the frame; a
  tie goes to the tied program holding the lowest note, then to the lower program number.
  The most-notes rule names the instrument that dominates the texture (the strings of a
  string quartet with a flute on top); -1 when nothing sounds.
- **silent**: no active note. Silent frames carry no musical label and the evaluation
  leaves them out of every metric.

The model's frame j is computed from log-mel frames centred on samples 960 j - 720 ..
960 j + 720 (the strided convs are centred on mel frame 4 j), so its receptive field is
centred half a frame (20 ms) before the centre used here: labels and tokens line up
to within that half frame, far below a note's typical length.

Note offsets are the MIDI note-offs; the rendered release tail after a note-off counts
as silence (or the next note), as a score would say.
"""
from __future__ import annotations

import dataclasses

import numpy as np

HOP = 960  # samples per semantic frame at 24 kHz: 25 Hz
SAMPLE_RATE = 24_000
NO_LABEL = -1


@dataclasses.dataclass(frozen=True)
class FrameLabels:
    pitch_classes: np.ndarray  # int32 [t]: 12-bit mask of the active pitch classes
    bass: np.ndarray           # int32 [t]: pitch class of the lowest active note, -1 silent
    program: np.ndarray        # int32 [t]: GM program of the most active notes, -1 silent

    @property
    def silent(self) -> np.ndarray:
        return self.pitch_classes == 0

    def __len__(self) -> int:
        return len(self.pitch_classes)

    @staticmethod
    def concatenate(parts: list["FrameLabels"]) -> "FrameLabels":
        return FrameLabels(*(np.concatenate([getattr(p, f.name) for p in parts]).astype(np.int32)
                             for f in dataclasses.fields(FrameLabels)))


def mask_to_pitch_classes(mask) -> np.ndarray:
    """[...] 12-bit masks -> [..., 12] bool (bit p = pitch class p)."""
    return (np.asarray(mask)[..., None] >> np.arange(12)) & 1 == 1


def frame_span(onset_s: np.ndarray, offset_s: np.ndarray, num_frames: int,
               hop: int = HOP, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """[first, end) frames whose centre (i + 0.5) * hop / sample_rate lies in [onset, offset):
    i >= onset / f - 0.5 and i < offset / f - 0.5 (f the frame length in seconds), clipped."""
    f = hop / sample_rate
    first = np.ceil(np.asarray(onset_s, np.float64) / f - 0.5).astype(np.int64)
    end = np.ceil(np.asarray(offset_s, np.float64) / f - 0.5).astype(np.int64)
    return np.clip(first, 0, num_frames), np.clip(end, 0, num_frames)


def frame_labels(notes: np.ndarray, num_frames: int, *, hop: int = HOP,
                 sample_rate: int = SAMPLE_RATE) -> FrameLabels:
    """Labels of frames 0 .. num_frames - 1 from note rows [n, 5] (``onset_s, offset_s,
    pitch, program, part``, seconds in the frames' own time base: for a crop, shift them
    first with `mufm.data.corpus.labels.window`)."""
    notes = np.asarray(notes, np.float64).reshape(-1, 5)
    first, end = frame_span(notes[:, 0], notes[:, 1], num_frames, hop, sample_rate)
    pitch = notes[:, 2].astype(np.int64)
    program = notes[:, 3].astype(np.int64)
    mask = np.zeros(num_frames, np.int64)
    lowest = np.full(num_frames, 128, np.int64)  # 128: no note
    programs = np.unique(program)
    counts = np.zeros((len(programs), num_frames), np.int64)
    program_lowest = np.full((len(programs), num_frames), 128, np.int64)
    row_of = {int(p): i for i, p in enumerate(programs)}
    for a, b, p, prog in zip(first, end, pitch, program):
        if a >= b:
            continue
        mask[a:b] |= 1 << int(p % 12)
        np.minimum(lowest[a:b], p, out=lowest[a:b])
        r = row_of[int(prog)]
        counts[r, a:b] += 1
        np.minimum(program_lowest[r, a:b], p, out=program_lowest[r, a:b])
    active = lowest < 128
    if len(programs):
        # Most notes, then the lowest note (128 - lowest: higher is lower), then the
        # smaller program number (128 - program), as one lexicographic integer key.
        key = (counts * 256 + (128 - program_lowest)) * 256 + (128 - programs[:, None])
        chosen = programs[np.argmax(key, axis=0)]
    else:
        chosen = np.zeros(num_frames, np.int64)
    return FrameLabels(pitch_classes=mask.astype(np.int32),
                       bass=np.where(active, lowest % 12, NO_LABEL).astype(np.int32),
                       program=np.where(active, chosen, NO_LABEL).astype(np.int32))
