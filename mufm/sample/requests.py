"""What a cascade request may ask for, checked before any model runs, and the checked
request itself: captions, story parts, lengths (mufm/sample/cascade.py builds and runs
them). Needs no model, so a front end can refuse bad input before loading any."""
from __future__ import annotations

import bisect
import math
from typing import NamedTuple, Sequence

import numpy as np

from mufm.lm.layouts import SEMANTIC_HZ
from mufm.sample.windows import CascadeError, Window

MAX_SECONDS = 1200.0
MIN_PROMPT_SECONDS = 1.0
SAMPLES_PER_SEMANTIC_FRAME = 24_000 // SEMANTIC_HZ
# The highest sampling temperature a request may set: far past any useful one (sampling is
# near uniform over the allowed ids by 10); the bound keeps a typo such as 1e9 from being
# taken for a setting.
MAX_TEMPERATURE = 100.0


def frames_for(seconds: float) -> int:
    """Semantic frames of a clip of `seconds`: whole 40 ms frames, rounded up (a float a
    hair over a whole frame count does not add one)."""
    return math.ceil(seconds * SEMANTIC_HZ - 1e-9)


def check_inputs(texts: Sequence[str], seconds: float, max_seconds: float = MAX_SECONDS
                 ) -> list[str]:
    """The captions as a list, or CascadeError: no caption, an empty one, seconds <= 0 or
    over `max_seconds`. Needs no model, so a front end can call it before loading any."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise CascadeError("no text given: pass at least one caption")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise CascadeError(f"text {i} is empty: every caption needs some words")
    _check_seconds(seconds, max_seconds)
    return texts


def _check_seconds(seconds: float, max_seconds: float, what: str = "seconds") -> float:
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds) or seconds <= 0):
        raise CascadeError(f"{what}={seconds!r}: must be a positive number")
    if seconds > max_seconds:
        raise CascadeError(f"{what}={seconds:g} is over the limit of {max_seconds:g} s "
                           f"(max_seconds)")
    return float(seconds)


def parse_story(spec: str) -> list[tuple[str, float]]:
    """"caption@seconds;caption@seconds;..." (the CLI's --story) -> [(caption, seconds)]."""
    parts = [p for p in spec.split(";") if p.strip()]
    if not parts:
        raise CascadeError(f"--story {spec!r}: give 'caption@seconds;caption@seconds;...'")
    out = []
    for i, part in enumerate(parts):
        text, at, seconds = part.rpartition("@")
        if not at:
            raise CascadeError(f"--story part {i} {part!r}: no '@seconds' (e.g. 'soft piano@10')")
        try:
            out.append((text.strip(), float(seconds)))
        except ValueError:
            raise CascadeError(f"--story part {i} {part!r}: {seconds!r} is not a number of "
                               f"seconds") from None
    return out


def check_story(story: Sequence[tuple[str, float]], max_seconds: float = MAX_SECONDS
                ) -> tuple[list[str], list[int]]:
    """(captions, the semantic frame each part ends at) of a story, or
    CascadeError: no part, an empty caption, a part under one semantic frame, a total
    over `max_seconds`."""
    story = list(story)
    if not story:
        raise CascadeError("an empty story: give at least one (caption, seconds) part")
    texts, ends, total = [], [], 0.0
    for i, part in enumerate(story):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise CascadeError(f"story part {i} is {part!r}, not (caption, seconds)")
        text, seconds = part
        if not isinstance(text, str) or not text.strip():
            raise CascadeError(f"story part {i}: the caption is empty")
        _check_seconds(seconds, max_seconds, f"story part {i} seconds")
        total += seconds
        end = int(round(total * SEMANTIC_HZ))
        if end <= (ends[-1] if ends else 0):
            raise CascadeError(f"story part {i} ({seconds:g} s) is shorter than one semantic "
                               f"frame (1/{SEMANTIC_HZ} s)")
        texts.append(text)
        ends.append(end)
    _check_seconds(total, max_seconds, "the story's seconds")
    return texts, ends


class Request(NamedTuple):
    """A checked request: what every row is conditioned on and how long it is."""
    texts: list[list[str]]  # per row, the caption of each part ([] for audio conditioning)
    mulan: np.ndarray  # [rows, parts, levels] conditioning tokens
    cuts: tuple[int, ...]  # the semantic frame each part after the first starts at
    frames: int  # semantic frames of the whole clip, prompt included
    samples: int  # audio samples of the whole clip, prompt included
    prompt_semantic: np.ndarray | None = None  # [rows, P] tokens of an audio prompt
    prompt_acoustic: np.ndarray | None = None  # [rows, 2 P, codec levels]

    @property
    def rows(self) -> int:
        return len(self.mulan)

    @property
    def prompt_frames(self) -> int:
        return 0 if self.prompt_semantic is None else self.prompt_semantic.shape[1]

    def part(self, frame: int) -> int:
        """The part (story segment) semantic frame `frame` is in."""
        return bisect.bisect_right(self.cuts, frame)


class Sampled(NamedTuple):
    """One window as a stage sampled it (`generate_tokens(..., record=True)`)."""
    window: Window  # in the stage's target frames
    codes: np.ndarray  # [rows, frames] semantic, [rows, frames, levels] acoustic
    part: int  # the story part whose caption conditioned it


def _check_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise CascadeError(f"num_samples={num_samples!r}: must be an integer >= 1")
    return num_samples
