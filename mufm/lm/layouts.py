"""Token layouts of the stage LMs: the one place that says how a stage's sequence is laid out.

A stage's sequence is a list of segments, conditioning first and the target last, e.g.

    stage 1 (semantic): [BOS mulan]   m0 .. m11   [BOS semantic] s0 s1 ...
    stage 2 (coarse):   [BOS mulan]   m0 .. m11   [BOS semantic] s0 .. s249
                        [BOS coarse]  t0q0 t0q1 t0q2 t0q3 t1q0 ...
    stage 3 (fine):     [BOS coarse]  t0q0 .. t0q3 t1q0 ...  [BOS fine] t0q4 .. t0q11 t1q4 ...

Rules (DESIGN.md, "Token layout rules"):

- One id space per stage. Ids 0..2 are `PAD`, `NULL`, `EMPTY`, then one BOS per segment,
  then a block of `codebook_size` ids per stream, in segment order and level order within a
  segment: every (stream, level) of the stage -- MuLan level q, semantic, acoustic level q --
  has its own offset, so no code of one stream can be read as another's, and no code equals
  a special id. `vocab_size` is the end of the last block; `LMConfig.vocab_size` must be at
  least that (rounding it up is harmless: ids past the end are never valid, see
  `logit_mask`).
- `PAD` (0) only ever follows the end of a sequence. seqio pads with 0, shifts its decoder
  inputs in with 0 and counts a feature's packed length by its non-zero entries, so a 0
  inside a sequence would be squeezed out by packing; `EMPTY` stands for a code that does
  not exist instead: the frames of a conditioning segment past the clip's end (a clip
  shorter than the crop) and the two triangles of the delay pattern.
- `NULL` replaces every token of a `droppable` segment (the MuLan tokens) when the
  conditioning is dropped for classifier-free guidance (`encode(..., drop_conditioning=
  True)`; the caller draws the coin, so encoding stays a pure function). It is distinct from
  `EMPTY` so the model can tell "no text prompt" from "short clip".
- A segment of several levels is flattened frame-major (t0q0 t0q1 ... t1q0 ...), so every
  prefix of it is a whole number of frames plus a partial frame whose known levels are the
  lowest ones (what RVQ decoding of the levels so far needs). With `pattern="delay"` (the
  target only: a single-stage acoustic model) it follows MusicGen's delay pattern instead:
  level q is delayed by q frames, the grid of T + K - 1 steps x K levels is flattened
  step-major and the cells that fall before frame 0 or past frame T - 1 hold `EMPTY`.
- Conditioning segments have a fixed length (`Segment.frames`, set in gin), so the target
  always starts at the same position and the sampler knows every position's stream
  (`locate`, `allowed_range`, `logit_mask`); the target holds up to `frames` frames.
- Loss weight 1 exactly on the target's codes; 0 on conditioning, BOS, NULL, EMPTY and PAD,
  unless `loss_on_conditioning` turns conditioning codes on too.
- Stream ids (for per-stream metrics, `DataConfig.stream_names = layout.stream_names`):
  0 `special` for BOS and PAD, then one id per (stream, level) in id-space order; a
  position holding NULL or EMPTY keeps the stream id of the cell it stands in for.

Examples are dicts of numpy int arrays in the pre-tokenised record's shapes: `mulan`
[levels], `semantic` [frames], `acoustic` [frames, levels], codes in [0, codebook_size) and
`MISSING` (-1, the semantic tokenizer's `PAD_ID`) for padded frames, which may only be whole
trailing frames. A segment takes its stream's array and its levels out of it (stage 3's
`coarse` and `fine` both read `acoustic`). Everything here is numpy (it runs in the input
pipeline); `range_mask` also takes jax arrays.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Sequence

import gin
import numpy as np

PAD = 0  # after the end of a sequence only
NULL = 1  # every token of a dropped (classifier-free guidance) conditioning segment
EMPTY = 2  # a code that does not exist: delay triangles, conditioning past the clip's end
FIRST_BOS = 3  # the BOS of segment k is FIRST_BOS + k
MISSING = -1  # the code value of "no code here" in examples and decoded arrays

STREAMS = ("mulan", "semantic", "acoustic")
PATTERNS = ("frame_major", "delay")
SEMANTIC_HZ = 25  # frames per second of the streams, to turn crop seconds into frames
ACOUSTIC_HZ = 50


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Segment:
    """One run of tokens of one stream: `num_levels` levels from `first_level`, `frames`
    frames (a conditioning segment's exact length, a target's maximum)."""
    name: str
    stream: str  # mulan | semantic | acoustic: the example key it reads
    frames: int
    first_level: int = 0
    num_levels: int = 1
    codebook_size: int = 1024
    pattern: str = "frame_major"  # frame_major | delay
    droppable: bool = False  # replaced by NULL when the conditioning is dropped

    def __post_init__(self):
        where = f"Segment {self.name!r}"
        if self.stream not in STREAMS:
            raise ValueError(f"{where}: stream={self.stream!r}; use one of {STREAMS}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"{where}: pattern={self.pattern!r}; use one of {PATTERNS}")
        if self.frames < 0 or self.first_level < 0 or self.num_levels < 1 or self.codebook_size < 1:
            raise ValueError(f"{where}: needs frames >= 0, first_level >= 0, num_levels >= 1 and "
                             f"codebook_size >= 1, got {self.frames}, {self.first_level}, "
                             f"{self.num_levels}, {self.codebook_size}")
        # The record holds one MuLan token per level for the whole clip and one semantic
        # token per frame: other shapes would not match what `encode` reads.
        if self.stream == "mulan" and self.frames != 1:
            raise ValueError(f"{where}: a MuLan segment is one frame of levels, got frames={self.frames}")
        if self.stream == "semantic" and (self.first_level, self.num_levels) != (0, 1):
            raise ValueError(f"{where}: the semantic stream has one level, got levels "
                             f"{self.first_level}..{self.first_level + self.num_levels - 1}")

    @property
    def levels(self) -> range:
        return range(self.first_level, self.first_level + self.num_levels)

    def stream_name(self, level: int) -> str:
        return self.stream if self.stream == "semantic" else f"{self.stream}_{level}"

    def num_tokens(self, frames: int | None = None) -> int:
        """Tokens of `frames` frames (default: all) after the segment's BOS."""
        frames = self.frames if frames is None else frames
        if self.pattern == "delay" and frames:
            return (frames + self.num_levels - 1) * self.num_levels
        return frames * self.num_levels


def _order(seg: Segment, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame, level - first_level) of each token of `frames` frames of `seg`, in sequence
    order; frame -1 marks a delay-pattern cell outside the frames (EMPTY). The one
    definition of both flattenings: encode, decode and the sampler's tables all use it."""
    n_levels = seg.num_levels
    if seg.pattern == "frame_major" or frames == 0:
        return (np.repeat(np.arange(frames), n_levels), np.tile(np.arange(n_levels), frames))
    steps = frames + n_levels - 1
    step = np.repeat(np.arange(steps), n_levels)
    level = np.tile(np.arange(n_levels), steps)
    frame = step - level
    return np.where((frame >= 0) & (frame < frames), frame, -1), level


class Stream(NamedTuple):
    """One (stream, level) of a stage and its block of ids [offset, offset + size)."""
    name: str  # e.g. mulan_3, semantic, acoustic_7
    segment: str
    level: int
    offset: int
    size: int


class Slot(NamedTuple):
    """What a position of a stage's sequence holds (`StageLayout.locate`)."""
    segment: str
    kind: str  # bos | code | empty
    stream: str | None  # None for a BOS
    level: int | None
    frame: int | None  # None for a BOS and an EMPTY delay cell


_BOS, _CODE, _EMPTY = 0, 1, 2
_KINDS = ("bos", "code", "empty")


class _Table(NamedTuple):
    """Per position of a whole sequence: segment index, kind, stream index (0 special),
    absolute level and frame (-1 where none), allowed ids [lo, hi)."""
    segment: np.ndarray
    kind: np.ndarray
    stream: np.ndarray
    level: np.ndarray
    frame: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StageLayout:
    """A stage's sequence: `segments`, conditioning first, the last one the target."""
    name: str
    segments: Sequence[Segment]
    loss_on_conditioning: bool = False

    def __post_init__(self):
        # Mappings: the layout rebuilt from a run's stored JSON config (dataclasses.asdict).
        segs = tuple(Segment(**s) if isinstance(s, Mapping) else s for s in self.segments)
        object.__setattr__(self, "segments", segs)
        if not segs:
            raise ValueError(f"StageLayout {self.name!r}: needs at least a target segment")
        names = [s.name for s in segs]
        if len(set(names)) != len(names):
            raise ValueError(f"StageLayout {self.name!r}: segment names repeat: {names}")
        seen = {}
        for s in segs:
            for q in s.levels:
                key = s.stream_name(q)
                if key in seen:
                    raise ValueError(f"StageLayout {self.name!r}: {key} is in segments "
                                     f"{seen[key]!r} and {s.name!r}; each stream level may "
                                     f"appear once")
                seen[key] = s.name
        for s in segs[:-1]:
            if s.pattern != "frame_major":
                raise ValueError(f"StageLayout {self.name!r}: conditioning segment {s.name!r} has "
                                 f"pattern={s.pattern!r}; the delay pattern is for the target only")
        if segs[-1].droppable:
            raise ValueError(f"StageLayout {self.name!r}: the target {segs[-1].name!r} cannot be "
                             f"droppable (only conditioning is dropped)")

    # -- the id space ------------------------------------------------------------------

    @property
    def target(self) -> Segment:
        return self.segments[-1]

    @property
    def num_special(self) -> int:
        return FIRST_BOS + len(self.segments)

    def bos(self, segment: str) -> int:
        return FIRST_BOS + self._segment_index(segment)

    @functools.cached_property
    def streams(self) -> tuple[Stream, ...]:
        out, offset = [], self.num_special
        for s in self.segments:
            for q in s.levels:
                out.append(Stream(s.stream_name(q), s.name, q, offset, s.codebook_size))
                offset += s.codebook_size
        return tuple(out)

    @property
    def vocab_size(self) -> int:
        last = self.streams[-1]
        return last.offset + last.size

    @property
    def stream_names(self) -> tuple[str, ...]:
        """Names of the stream ids (index = id): `DataConfig.stream_names`."""
        return ("special",) + tuple(s.name for s in self.streams)

    @functools.cached_property
    def _first_stream(self) -> tuple[int, ...]:
        """Index into `streams` of each segment's first level."""
        firsts, n = [], 0
        for s in self.segments:
            firsts.append(n)
            n += s.num_levels
        return tuple(firsts)

    def _offsets(self, k: int) -> np.ndarray:
        first = self._first_stream[k]
        return np.array([st.offset for st in self.streams[first:first + self.segments[k].num_levels]])

    def _stream_ids(self, k: int) -> np.ndarray:
        first = self._first_stream[k]
        return np.arange(self.segments[k].num_levels) + first + 1  # 0 is `special`

    def _segment_index(self, name: str) -> int:
        for k, s in enumerate(self.segments):
            if s.name == name:
                return k
        raise ValueError(f"StageLayout {self.name!r} has no segment {name!r}; it has "
                         f"{[s.name for s in self.segments]}")

    def describe(self, token: int) -> str:
        """What an id means in this stage, for error messages and debugging."""
        token = int(token)
        if not 0 <= token < self.vocab_size:
            return f"id {token} (outside the vocabulary [0, {self.vocab_size}))"
        if token < FIRST_BOS:
            return f"id {token} ({('pad', 'null', 'empty')[token]})"
        if token < self.num_special:
            return f"id {token} (BOS of segment {self.segments[token - FIRST_BOS].name!r})"
        for st in self.streams:
            if st.offset <= token < st.offset + st.size:
                return f"id {token} ({st.name} code {token - st.offset})"
        raise AssertionError("the streams tile [num_special, vocab_size)")

    @property
    def max_length(self) -> int:
        """Tokens of a sequence with a full target: the stage's `DataConfig.sequence_length`
        (at least)."""
        return sum(1 + s.num_tokens() for s in self.segments)

    @property
    def prompt_length(self) -> int:
        """Tokens before the target's first code (the conditioning and the target's BOS)."""
        return sum(1 + s.num_tokens() for s in self.segments[:-1]) + 1

    # -- examples -> sequences ---------------------------------------------------------

    def _cells(self, k: int, example: Mapping[str, Any]) -> np.ndarray:
        """Segment k's present frames as [frames, num_levels] codes, validated."""
        seg = self.segments[k]
        where = f"stage {self.name!r}, segment {seg.name!r}"
        if seg.stream not in example:
            raise ValueError(f"{where}: the example has no {seg.stream!r} (keys: {sorted(example)})")
        a = np.asarray(example[seg.stream])
        if not (np.issubdtype(a.dtype, np.integer) or (a.size == 0 and a.dtype == np.float64)):
            raise ValueError(f"{where}: {seg.stream!r} must hold integer codes, got dtype {a.dtype}")
        want = {"mulan": 1, "semantic": 1, "acoustic": 2}[seg.stream]
        if a.ndim != want:
            shape = {"mulan": "[levels]", "semantic": "[frames]", "acoustic": "[frames, levels]"}
            raise ValueError(f"{where}: {seg.stream!r} must be {shape[seg.stream]}, got shape "
                             f"{a.shape}")
        a = a.astype(np.int64)
        if seg.stream == "semantic":
            cells = a[:, None]
        else:
            have = a.shape[-1]
            if have < seg.first_level + seg.num_levels:
                raise ValueError(f"{where}: needs levels {seg.first_level}..{seg.levels[-1]} of "
                                 f"{seg.stream!r}, which has {have}")
            cells = a[..., seg.first_level:seg.first_level + seg.num_levels]
            if seg.stream == "mulan":
                cells = cells[None]
        bad = ((cells < 0) | (cells >= seg.codebook_size)) & (cells != MISSING)
        if bad.any():
            f, q = np.argwhere(bad)[0]
            raise ValueError(f"{where}: frame {f}, level {seg.first_level + q} holds {cells[f, q]}, "
                             f"outside [0, {seg.codebook_size}) (and not MISSING={MISSING})")
        missing = cells == MISSING
        whole = missing.all(axis=1)
        if (missing.any(axis=1) & ~whole).any():
            f = int(np.argmax(missing.any(axis=1) & ~whole))
            raise ValueError(f"{where}: frame {f} is partly MISSING; only whole frames may be")
        present = int(np.argmax(whole)) if whole.any() else len(cells)
        if whole[present:].sum() != len(cells) - present:
            raise ValueError(f"{where}: MISSING frames must all come after the last present one "
                             f"(frame {present} is missing, a later one is not)")
        if present > seg.frames:
            raise ValueError(f"{where}: {present} frames, the layout holds {seg.frames}: crop the "
                             f"example first")
        return cells[:present]

    def segment_codes(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The codes each segment takes from `example`, in the stream's shape, as `decode`
        gives them back: conditioning padded with MISSING to its length, the target as given
        (trailing MISSING frames dropped)."""
        out = {}
        for k, seg in enumerate(self.segments):
            cells = self._cells(k, example)
            if k < len(self.segments) - 1:
                cells = np.pad(cells, ((0, seg.frames - len(cells)), (0, 0)), constant_values=MISSING)
            out[seg.name] = _shape_like_stream(seg, cells)
        return out

    def _segment_tokens(self, k: int, cells: np.ndarray, drop: bool):
        """(ids, stream ids, loss weights) of segment k, its BOS first."""
        seg = self.segments[k]
        is_target = k == len(self.segments) - 1
        frames = len(cells) if is_target else seg.frames
        cells = np.pad(cells, ((0, frames - len(cells)), (0, 0)), constant_values=MISSING)
        frame, level = _order(seg, frames)
        codes = np.where(frame >= 0, cells[np.maximum(frame, 0), level], MISSING)
        ids = np.where(codes >= 0, codes + self._offsets(k)[level], EMPTY)
        if drop and seg.droppable:
            ids = np.full_like(ids, NULL)
        weighted = is_target or self.loss_on_conditioning
        weights = (ids >= self.num_special) & weighted
        return (np.concatenate([[FIRST_BOS + k], ids]),
                np.concatenate([[0], self._stream_ids(k)[level]]),
                np.concatenate([[0], weights]))

    def _sequence(self, example, drop_conditioning: bool, with_target: bool):
        if drop_conditioning and not any(s.droppable for s in self.segments):
            raise ValueError(f"stage {self.name!r}: drop_conditioning=True, but no segment is "
                             f"droppable")
        parts = []
        for k, seg in enumerate(self.segments):
            if k < len(self.segments) - 1 or with_target:
                cells = self._cells(k, example)
            else:
                cells = np.zeros((0, seg.num_levels), np.int64)
            parts.append(self._segment_tokens(k, cells, drop_conditioning))
        return tuple(np.concatenate(p).astype(np.int32) for p in zip(*parts))

    def encode(self, example: Mapping[str, Any], *, drop_conditioning: bool = False,
               length: int | None = None) -> dict[str, np.ndarray]:
        """One example -> the LM batch features of one row (int32 [n], or [length] padded
        with PAD, weight 0 and stream 0). seqio's convention: the inputs are the targets
        shifted right by one with 0 first, so the logits at position p predict
        `decoder_target_tokens[p]`."""
        ids, streams, weights = self._sequence(example, drop_conditioning, with_target=True)
        if length is not None:
            if len(ids) > length:
                raise ValueError(f"stage {self.name!r}: the sequence has {len(ids)} tokens, more "
                                 f"than length={length}")
            pad = (0, length - len(ids))
            ids, streams, weights = (np.pad(x, pad) for x in (ids, streams, weights))
        inputs = np.concatenate([[PAD], ids[:-1]]).astype(np.int32)
        return {"decoder_target_tokens": ids, "decoder_input_tokens": inputs,
                "decoder_loss_weights": weights, "decoder_stream_ids": streams}

    def encode_batch(self, examples: Sequence[Mapping[str, Any]], *, length: int | None = None,
                     drop_conditioning: Sequence[bool] | None = None) -> dict[str, np.ndarray]:
        """Examples -> [batch, length] features (default length: `max_length`)."""
        length = self.max_length if length is None else length
        drops = [False] * len(examples) if drop_conditioning is None else list(drop_conditioning)
        if not examples or len(drops) != len(examples):
            raise ValueError(f"stage {self.name!r}: encode_batch needs examples and one "
                             f"drop_conditioning flag each, got {len(examples)} and {len(drops)}")
        rows = [self.encode(e, drop_conditioning=d, length=length) for e, d in zip(examples, drops)]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}

    def prompt(self, example: Mapping[str, Any], *, drop_conditioning: bool = False) -> np.ndarray:
        """The sampler's prompt: the conditioning segments of `example` and the target's
        BOS (the example's target stream is not read). `drop_conditioning` gives the
        unconditional prompt of classifier-free guidance."""
        return self._sequence(example, drop_conditioning, with_target=False)[0]

    # -- positions (the sampler) -------------------------------------------------------

    def _target_frames(self, target_frames: int | None) -> int:
        frames = self.target.frames if target_frames is None else int(target_frames)
        if not 0 <= frames <= self.target.frames:
            raise ValueError(f"stage {self.name!r}: target_frames={frames} outside "
                             f"[0, {self.target.frames}]")
        return frames

    def _table(self, target_frames: int | None) -> _Table:
        return _position_table(self, self._target_frames(target_frames))

    def locate(self, position: int, *, target_frames: int | None = None) -> Slot:
        """What position `position` of a sequence whose target has `target_frames` frames
        (default the maximum; it decides where the delay pattern's end triangle lies) holds."""
        t = self._table(target_frames)
        if not 0 <= position < len(t.kind):
            raise ValueError(f"stage {self.name!r}: position {position} outside the "
                             f"{len(t.kind)} tokens of a sequence with "
                             f"{self._target_frames(target_frames)} target frames")
        k, kind = int(t.segment[position]), int(t.kind[position])
        if kind == _BOS:
            return Slot(self.segments[k].name, "bos", None, None, None)
        frame = int(t.frame[position])
        return Slot(self.segments[k].name, _KINDS[kind], self.stream_names[t.stream[position]],
                    int(t.level[position]), frame if frame >= 0 else None)

    def allowed_range(self, position: int, *, target_frames: int | None = None) -> tuple[int, int]:
        """The ids [lo, hi) a sampler may put at `position`: its stream's codes, or the one
        BOS / EMPTY that belongs there. Conditioning positions give their codes (NULL and
        EMPTY there are the prompt's business, never sampled)."""
        self.locate(position, target_frames=target_frames)  # range check, one message
        t = self._table(target_frames)
        return int(t.lo[position]), int(t.hi[position])

    def allowed_ranges(self, *, target_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`allowed_range` of every position, as int32 arrays (lo, hi) of the sequence's length:
        index them with a decoding loop's position, on the host or as jit constants."""
        t = self._table(target_frames)
        return t.lo.copy(), t.hi.copy()

    def logit_mask(self, positions, *, target_frames: int | None = None,
                   vocab_size: int | None = None) -> np.ndarray:
        """bool [*positions.shape, vocab] mask of the ids allowed at `positions` (vocab_size
        defaults to the layout's; a larger model vocabulary gets False past it)."""
        lo, hi = self.allowed_ranges(target_frames=target_frames)
        positions = np.asarray(positions)
        if ((positions < 0) | (positions >= len(lo))).any():
            raise ValueError(f"stage {self.name!r}: positions outside [0, {len(lo)})")
        return range_mask(lo[positions], hi[positions], vocab_size or self.vocab_size)

    # -- sequences -> codes ------------------------------------------------------------

    def decode(self, ids) -> dict[str, np.ndarray]:
        """A whole or a prefix sequence (1-D, from position 0; trailing PAD ignored) -> codes
        per segment in the stream's shape (`segment_codes`), MISSING where no code is known:
        conditioning past the clip's end or dropped (NULL), and what the prefix has not
        reached. A frame-major target of n tokens gives ceil(n / levels) frames, the last one
        partial; a delay target gives the frames it has begun. Raises ValueError naming the
        position, what it holds and what was expected there, for any id outside the stream
        (or the BOS / EMPTY) expected at that position."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise ValueError(f"stage {self.name!r}: decode takes a 1-D integer sequence, got "
                             f"shape {ids.shape} dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        n = len(ids)
        while n and ids[n - 1] == PAD:
            n -= 1
        ids = ids[:n]
        out, cursor = {}, 0
        for k, seg in enumerate(self.segments):
            if cursor < n and ids[cursor] != FIRST_BOS + k:
                raise ValueError(f"stage {self.name!r}: position {cursor} holds "
                                 f"{self.describe(ids[cursor])}, expected the BOS of segment "
                                 f"{seg.name!r} (id {FIRST_BOS + k})")
            start = min(cursor + 1, n)
            max_tokens = seg.num_tokens()
            is_target = k == len(self.segments) - 1
            stop = n if is_target else min(n, start + max_tokens)
            cells = self._decode_segment(k, ids[start:stop], start)
            out[seg.name] = _shape_like_stream(seg, cells)
            cursor = start + max_tokens
        return out

    def _decode_segment(self, k: int, toks: np.ndarray, start: int) -> np.ndarray:
        seg = self.segments[k]
        n_levels = seg.num_levels
        is_target = k == len(self.segments) - 1
        if is_target and seg.pattern == "delay":
            frames = self._delay_frames(toks)
        else:
            frames = seg.frames
        frame, level = _order(seg, frames)
        extra, toks = toks[len(frame):], toks[:len(frame)]  # the earliest bad position first
        frame, level = frame[:len(toks)], level[:len(toks)]
        lo = self._offsets(k)[level]
        is_code = (frame >= 0) & (toks >= lo) & (toks < lo + seg.codebook_size)
        ok = is_code | ((frame < 0) & (toks == EMPTY))
        empty = (frame >= 0) & (toks == EMPTY)
        null = (toks == NULL) if seg.droppable else np.zeros(len(toks), bool)
        if not is_target:
            ok |= empty | null
        if not ok.all():
            i = int(np.argmin(ok))
            st = self.streams[self._first_stream[k] + level[i]]
            if frame[i] < 0:
                expected, cell = f"EMPTY (id {EMPTY})", "outside the frames (delay triangle)"
            else:
                expected = f"{st.name} ids [{st.offset}, {st.offset + st.size})"
                cell = f"frame {frame[i]}"
            raise ValueError(f"stage {self.name!r}: position {start + i} (segment {seg.name!r}, "
                             f"{st.name}, {cell}) holds {self.describe(toks[i])}; expected "
                             f"{expected}")
        if len(extra):
            raise ValueError(f"stage {self.name!r}: position {start + len(frame)} is past the end "
                             f"of segment {seg.name!r} ({len(frame)} tokens for {frames} frames); "
                             f"it holds {self.describe(extra[0])}")
        if null.any() and not null.all():
            raise ValueError(f"stage {self.name!r}: segment {seg.name!r} is partly NULL (from "
                             f"position {start + int(np.argmax(null))}); a dropped segment is "
                             f"NULL throughout")
        if empty.any():
            e = int(np.argmax(empty))
            if e % n_levels or not empty[e:].all():
                raise ValueError(f"stage {self.name!r}: segment {seg.name!r} has EMPTY from "
                                 f"position {start + e} that does not fill whole trailing frames")
        if is_target and seg.pattern == "frame_major":
            frames = -(-len(toks) // n_levels)
        cells = np.full((frames, n_levels), MISSING, np.int64)
        cells[frame[is_code], level[is_code]] = toks[is_code] - lo[is_code]
        return cells

    def _delay_frames(self, toks: np.ndarray) -> int:
        """Frames of a (prefix of a) delay-pattern target: level 0 of step s is frame s, and
        its first EMPTY marks the end; before that, the frames level 0 has begun. Capped at
        the layout's frames, so a code past them fails validation at its own position."""
        level0 = toks[::self.target.num_levels]
        ends = np.flatnonzero(level0 == EMPTY)
        return min(int(ends[0]) if len(ends) else len(level0), self.target.frames)


@functools.lru_cache(maxsize=32)
def _position_table(layout: StageLayout, target_frames: int) -> _Table:
    cols = {f: [] for f in _Table._fields}
    for k, seg in enumerate(layout.segments):
        frames = target_frames if k == len(layout.segments) - 1 else seg.frames
        frame, level = _order(seg, frames)
        bos = FIRST_BOS + k
        lo = np.where(frame >= 0, layout._offsets(k)[level], EMPTY)
        hi = np.where(frame >= 0, lo + seg.codebook_size, EMPTY + 1)
        for name, head, body in (
                ("segment", k, np.full(len(frame), k)),
                ("kind", _BOS, np.where(frame >= 0, _CODE, _EMPTY)),
                ("stream", 0, layout._stream_ids(k)[level]),
                ("level", -1, level + seg.first_level),
                ("frame", -1, frame), ("lo", bos, lo), ("hi", bos + 1, hi)):
            cols[name] += [[head], body]
    return _Table(**{f: np.concatenate(v).astype(np.int32) for f, v in cols.items()})


def _shape_like_stream(seg: Segment, cells: np.ndarray) -> np.ndarray:
    """[frames, levels] -> the stream's record shape: mulan [levels], semantic [frames]."""
    if seg.stream == "mulan":
        return cells.reshape(-1)
    if seg.stream == "semantic":
        return cells[:, 0]
    return cells


def range_mask(lo, hi, vocab_size: int):
    """bool [..., vocab_size]: True where lo <= id < hi. numpy in, numpy out; jax in (e.g.
    the looked-up range of a traced position), jax out."""
    iota = np.arange(vocab_size, dtype=np.int32)
    return (lo[..., None] <= iota) & (hi[..., None] > iota)  # lo/hi first: jax arrays win


# -- the delay pattern as a grid (for a model that predicts all levels of a step at once) --

def delay_codes(codes, fill: int = MISSING) -> np.ndarray:
    """MusicGen's delay pattern: codes [T, K] -> [T + K - 1, K] with level q delayed by q
    steps (out[t + q, q] = codes[t, q]) and `fill` in the two triangles."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"delay_codes takes [frames, levels], got shape {codes.shape}")
    t, k = codes.shape
    if t == 0:
        return np.zeros((0, k), codes.dtype)
    out = np.full((t + k - 1, k), fill, codes.dtype)
    for q in range(k):
        out[q:q + t, q] = codes[:, q]
    return out


def undelay_codes(grid, fill: int = MISSING) -> np.ndarray:
    """The inverse of `delay_codes`: [S, K] -> [S - K + 1, K]; the triangles must hold `fill`."""
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"undelay_codes takes [steps, levels], got shape {grid.shape}")
    s, k = grid.shape
    if s == 0:
        return grid.copy()
    t = s - k + 1
    if t < 1:
        raise ValueError(f"undelay_codes: {s} steps are fewer than the {k} levels' delays")
    step = np.arange(s)[:, None] - np.arange(k)[None, :]
    triangle = (step < 0) | (step >= t)
    if (grid[triangle] != fill).any():
        raise ValueError(f"undelay_codes: the delay triangles must hold fill={fill}")
    return np.stack([grid[q:q + t, q] for q in range(k)], axis=1)


# -- the stages of the cascade (gin: e.g. `LMTask.layout = @coarse_stage()`) ---------------

def _mulan(levels: int, codes: int) -> Segment:
    return Segment("mulan", "mulan", frames=1, num_levels=levels, codebook_size=codes, droppable=True)


@gin.configurable
def semantic_stage(semantic_frames: int = 30 * SEMANTIC_HZ, *, mulan_levels: int = 12,
                   mulan_codes: int = 1024, semantic_codes: int = 1024,
                   loss_on_conditioning: bool = False) -> StageLayout:
    """Stage 1: [mulan] semantic (30 s crops: 750 frames)."""
    return StageLayout("semantic", (
        _mulan(mulan_levels, mulan_codes),
        Segment("semantic", "semantic", frames=semantic_frames, codebook_size=semantic_codes),
    ), loss_on_conditioning)


@gin.configurable
def coarse_stage(semantic_frames: int = 10 * SEMANTIC_HZ, coarse_frames: int = 10 * ACOUSTIC_HZ, *,
                 coarse_levels: int = 4, mulan_levels: int = 12, mulan_codes: int = 1024,
                 semantic_codes: int = 1024, acoustic_codes: int = 1024,
                 loss_on_conditioning: bool = False) -> StageLayout:
    """Stage 2: [mulan][semantic] acoustic levels 0..coarse_levels-1 (10 s crops)."""
    return StageLayout("coarse", (
        _mulan(mulan_levels, mulan_codes),
        Segment("semantic", "semantic", frames=semantic_frames, codebook_size=semantic_codes),
        Segment("coarse", "acoustic", frames=coarse_frames, num_levels=coarse_levels,
                codebook_size=acoustic_codes),
    ), loss_on_conditioning)


@gin.configurable
def fine_stage(coarse_frames: int = 3 * ACOUSTIC_HZ, fine_frames: int = 3 * ACOUSTIC_HZ, *,
               coarse_levels: int = 4, acoustic_levels: int = 12, acoustic_codes: int = 1024,
               loss_on_conditioning: bool = False) -> StageLayout:
    """Stage 3: [coarse] acoustic levels coarse_levels..acoustic_levels-1 (3 s crops)."""
    return StageLayout("fine", (
        Segment("coarse", "acoustic", frames=coarse_frames, num_levels=coarse_levels,
                codebook_size=acoustic_codes),
        Segment("fine", "acoustic", frames=fine_frames, first_level=coarse_levels,
                num_levels=acoustic_levels - coarse_levels, codebook_size=acoustic_codes),
    ), loss_on_conditioning)


@gin.configurable
def delay_stage(acoustic_frames: int = 10 * ACOUSTIC_HZ, *, acoustic_levels: int = 12,
                mulan_levels: int = 12, mulan_codes: int = 1024, acoustic_codes: int = 1024,
                loss_on_conditioning: bool = False) -> StageLayout:
    """One stage for all levels, MusicGen-style: [mulan] acoustic in the delay pattern."""
    return StageLayout("delay", (
        _mulan(mulan_levels, mulan_codes),
        Segment("acoustic", "acoustic", frames=acoustic_frames, num_levels=acoustic_levels,
                codebook_size=acoustic_codes, pattern="delay"),
    ), loss_on_conditioning)
