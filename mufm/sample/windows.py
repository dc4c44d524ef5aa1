"""The cascade's sliding windows and the token buffers between its stages.

Each stage LM was trained on fixed windows (its layout's segment frames), so a clip longer
than a window is generated window by window: each next one starts `keep` frames before
the end of what exists, those frames given as a prefix of the target (prefilled after its
BOS, kept verbatim), only the frames after them sampled. A window never samples past a
stop (the clip's end, or a story boundary): it starts earlier instead (a longer prefix),
so every window but one at the very start is full and sees as much context as the stage
was trained with.

A `Track` holds one stream's frames between the stage that writes them and the stages
(and the codec) that read them, and forgets the frames no later window will read: what
a request holds is bounded by the windows, not by the length asked for.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from mufm.lm.layouts import MISSING


class CascadeError(ValueError):
    """Runs that do not fit together, or input the cascade cannot generate from: one line."""


class Window(NamedTuple):
    """One sliding window of a stage, in the stage's target frames: it covers
    [start, start + frames), of which the first `prefix` were there before it."""
    start: int
    prefix: int
    frames: int

    @property
    def end(self) -> int:
        return self.start + self.frames

    @property
    def first_new(self) -> int:
        """The first frame this window samples."""
        return self.start + self.prefix


def plan_windows(total: int, window: int, keep: int, *, given: int = 0,
                 cuts: Sequence[int] = ()) -> list[Window]:
    """Windows that sample frames [given, total): frames before `given` exist already (an
    audio prompt). Each window samples up to the next stop, the stops being `cuts` (story
    boundaries: no window samples across one, so the conditioning can change exactly
    there) and `total`; it starts `keep` frames before what exists, or earlier where it
    would run past its stop."""
    if window < 1 or not 0 <= keep < window:
        raise CascadeError(f"sliding windows need window >= 1 and 0 <= keep < window, got "
                           f"window={window}, keep={keep}")
    if not 0 <= given <= total:
        raise CascadeError(f"{given} frames given of a clip of {total}")
    stops = sorted({int(c) for c in cuts if given < c < total}) + [total]
    out, end = [], given
    for stop in stops:
        while end < stop:
            start = max(0, min(end - keep, stop - window))
            frames = min(window, stop - start)
            out.append(Window(start, end - start, frames))
            end = start + frames
    return out


class Track:
    """Frames [0, end) of one stream for a batch of rows, written left to right, of which
    [offset, end) are still held. `forget(before)` drops the frames before `before`
    unless the track keeps everything (`keep_all`: for inspection); `peak` is the most
    frames it ever held."""

    def __init__(self, rows: int, tail: tuple[int, ...] = (), *, keep_all: bool = False):
        self._buf = np.full((rows, 0, *tail), MISSING, np.int64)
        self.offset = 0
        self.keep_all = keep_all
        self.peak = 0

    @property
    def end(self) -> int:
        return self.offset + self._buf.shape[1]

    def write(self, start: int, codes: np.ndarray) -> None:
        """Frames [start, start + len) from codes [rows, len, ...]; start <= end (no gaps)."""
        codes = np.asarray(codes)
        if not self.offset <= start <= self.end:
            raise AssertionError(f"write at frame {start}: the track holds [{self.offset}, "
                                 f"{self.end}) and is written without gaps")
        stop = start + codes.shape[1]
        if stop > self.end:
            grow = np.full((self._buf.shape[0], stop - self.end, *self._buf.shape[2:]),
                           MISSING, np.int64)
            self._buf = np.concatenate([self._buf, grow], axis=1)
        self._buf[:, start - self.offset:stop - self.offset] = codes
        self.peak = max(self.peak, self._buf.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """A copy of frames [start, stop)."""
        if not self.offset <= start <= stop <= self.end:
            raise AssertionError(f"read of frames [{start}, {stop}): the track holds "
                                 f"[{self.offset}, {self.end})")
        return self._buf[:, start - self.offset:stop - self.offset].copy()

    def forget(self, before: int) -> None:
        before = min(before, self.end)
        if self.keep_all or before <= self.offset:
            return
        self._buf = self._buf[:, before - self.offset:].copy()
        self.offset = before

    def everything(self) -> np.ndarray:
        """All frames [0, end): only while nothing was forgotten."""
        if self.offset:
            raise AssertionError(f"frames before {self.offset} were forgotten")
        return self._buf
