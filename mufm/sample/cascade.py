"""Text to audio through the whole cascade (issue #14): caption -> MuLan text tokens ->
semantic tokens (stage 1) -> coarse acoustic levels (stage 2) -> fine levels (stage 3) ->
codec decoder -> 24 kHz waveform.

Each stage LM was trained on fixed windows (its layout's segment frames), so a clip longer
than a window is generated with sliding windows: the first window from the conditioning
alone, every next one starting `overlap` of a window before the end of what exists, with
those overlapping frames given as a prefix of the target (prefilled after its BOS, kept
verbatim) and only the frames after them sampled. A window never runs past the clip: the
last one starts earlier instead (a longer prefix), so every window but a clip shorter than
one is full and sees as much context as the stage was trained with.

- semantic: windows of the stage-1 target frames, prompt [mulan].
- coarse: windows of the stage-2 coarse frames C = 2 S (25 Hz semantic frame k is 50 Hz
  acoustic frames 2k, 2k + 1), conditioned on [mulan] and the S semantic frames of the
  window's span; window starts are whole semantic frames.
- fine: windows of the stage-3 fine frames, conditioned on the coarse codes of the span.

`Cascade.load` reads every run's config and checks that the five runs fit together before
loading any weights; `generate` validates its inputs before any compute.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from mufm.lm.layouts import ACOUSTIC_HZ, MISSING, SEMANTIC_HZ, StageLayout
from mufm.sample.decode import SamplingConfig, generate_stage

# MusicLM's temperatures (Agostinelli et al. 2023, sec. 3.3): 1.0, 0.95, 0.4.
DEFAULT_CONFIGS = {
    "semantic": SamplingConfig(temperature=1.0),
    "coarse": SamplingConfig(temperature=0.95),
    "fine": SamplingConfig(temperature=0.4),
}
STAGES = ("semantic", "coarse", "fine")
MAX_SECONDS = 300.0


class CascadeError(ValueError):
    """Runs that do not fit together, or input the cascade cannot generate from: one line."""


class Window(NamedTuple):
    """One sliding window of a stage, in the stage's target frames: it covers
    [start, start + frames), of which the first `prefix` were carried over."""
    start: int
    prefix: int
    frames: int


def plan_windows(total: int, window: int, keep: int) -> list[Window]:
    """Windows covering `total` frames: each next one starts `keep` frames before the end
    of the last, or earlier where it would run past `total` (so it stays full)."""
    if window < 1 or not 0 <= keep < window:
        raise CascadeError(f"sliding windows need window >= 1 and 0 <= keep < window, got "
                           f"window={window}, keep={keep}")
    first = Window(0, 0, min(window, total))
    out, end = [first], first.frames
    while end < total:
        start = min(end - keep, total - window)
        out.append(Window(start, end - start, window))
        end = start + window
    return out


# -- reading and checking the runs ------------------------------------------------------------

def _record(role: str, path: str, family: str) -> tuple[dict, Any]:
    """(model_config.json record, its configs) of the run at `path`, of `family`."""
    from mufm.train.restore import CheckpointNotFoundError, config_from_json, read_model_config, resolve

    try:
        model_dir, _ = resolve(path, family=family)
        record = read_model_config(model_dir)
    except (CheckpointNotFoundError, OSError, ValueError) as e:
        raise CascadeError(f"{role} run: {e}") from None
    if record["family"] != family:
        raise CascadeError(f"{role} run {path}: a {record['family']!r} run, not a {family!r} run")
    return record, {k: config_from_json(v) for k, v in record["configs"].items()}


def _stage_layout(role: str, path: str) -> StageLayout:
    _, configs = _record(role, path, "lm")
    regs = getattr(configs.get("data"), "registrations", ())
    layout = getattr(regs[0], "layout", None) if regs else None
    if not isinstance(layout, StageLayout):
        raise CascadeError(f"{role} run {path}: its data config has no stage token task layout")
    return layout


def _shape(layout: StageLayout) -> list[tuple[str, int, int]]:
    return [(s.stream, s.first_level, s.num_levels) for s in layout.segments]


def check_layouts(mulan: tuple[int, int], semantic: StageLayout, coarse: StageLayout,
                  fine: StageLayout, codec: tuple[int, int]) -> None:
    """The stages' layouts against each other and the tokenizers: `mulan` and `codec` are
    (levels, codebook size). Raises CascadeError naming the first mismatch."""
    def need(ok: bool, message: str):
        if not ok:
            raise CascadeError(message)

    need(_shape(semantic)[:1] == [("mulan", 0, semantic.segments[0].num_levels)]
         and len(semantic.segments) == 2 and semantic.target.stream == "semantic",
         f"the semantic run's layout {semantic.name!r} is not [mulan] semantic: {_shape(semantic)}")
    need(len(coarse.segments) == 3 and [s.stream for s in coarse.segments]
         == ["mulan", "semantic", "acoustic"] and coarse.target.first_level == 0,
         f"the coarse run's layout {coarse.name!r} is not [mulan][semantic] acoustic 0..: "
         f"{_shape(coarse)}")
    need(len(fine.segments) == 2 and [s.stream for s in fine.segments] == ["acoustic"] * 2,
         f"the fine run's layout {fine.name!r} is not [acoustic] acoustic: {_shape(fine)}")
    levels, codes = mulan
    for name, layout in (("semantic", semantic), ("coarse", coarse)):
        seg = layout.segments[0]
        need((seg.num_levels, seg.codebook_size) == (levels, codes),
             f"the {name} stage takes {seg.num_levels} MuLan levels x {seg.codebook_size} codes, "
             f"the MuLan run's tokens are {levels} x {codes}")
    need(semantic.target.codebook_size == coarse.segments[1].codebook_size,
         f"the semantic stage samples {semantic.target.codebook_size} semantic codes, the coarse "
         f"stage reads {coarse.segments[1].codebook_size}")
    codec_levels, codec_codes = codec
    for name, seg in (("coarse", coarse.target), ("fine", fine.segments[0]), ("fine", fine.target)):
        need(seg.codebook_size == codec_codes,
             f"the {name} stage's segment {seg.name!r} has {seg.codebook_size} acoustic codes, the "
             f"codec {codec_codes}")
    cond, target = fine.segments[0], fine.target
    need((cond.first_level, cond.num_levels) == (0, coarse.target.num_levels),
         f"the fine stage is conditioned on acoustic levels {cond.first_level}.."
         f"{cond.levels[-1]}, the coarse stage samples 0..{coarse.target.num_levels - 1}")
    need(target.first_level == coarse.target.num_levels
         and coarse.target.num_levels + target.num_levels == codec_levels,
         f"coarse levels 0..{coarse.target.num_levels - 1} + fine levels {target.first_level}.."
         f"{target.levels[-1]} do not make the codec's {codec_levels} levels")
    need(coarse.target.frames == 2 * coarse.segments[1].frames,
         f"the coarse stage's {coarse.target.frames} acoustic frames are not the 2 x "
         f"{coarse.segments[1].frames} semantic frames of its window")
    need(cond.frames == target.frames,
         f"the fine stage's window has {cond.frames} coarse frames but {target.frames} fine ones")


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
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise CascadeError(f"seconds={seconds!r}: must be a positive number")
    if seconds > max_seconds:
        raise CascadeError(f"seconds={seconds:g} is over the limit of {max_seconds:g} s "
                           f"(max_seconds)")
    return texts


# -- the cascade -----------------------------------------------------------------------------

@dataclasses.dataclass
class Cascade:
    """The five trained models, loaded once. `generate` turns captions into audio."""
    mulan: Any  # mufm.mulan.embed.MuLan, with fitted tokens
    stages: dict  # name -> (LoadedModel, StageLayout), for semantic, coarse, fine
    codec: Any  # LoadedModel of the codec
    overlap: float = 0.5  # of a window, carried into the next one as the target's prefix
    max_seconds: float = MAX_SECONDS

    def __post_init__(self):
        if not 0 <= self.overlap < 1:
            raise CascadeError(f"overlap={self.overlap}: must be in [0, 1)")
        if not self.max_seconds > 0:
            raise CascadeError(f"max_seconds={self.max_seconds}: must be > 0")
        # Modules merged once: `generate_stage` would merge one per window otherwise.
        self._modules = {name: loaded.module() for name, (loaded, _) in self.stages.items()}
        self.timings: dict[str, float] = {}

    @classmethod
    def load(cls, mulan_dir: str, semantic_dir: str, coarse_dir: str, fine_dir: str,
             codec_dir: str, **kwargs) -> "Cascade":
        """Checks the runs fit together from their configs alone, then loads the weights."""
        from mufm.codec.restore import load_codec
        from mufm.mulan.embed import TOKENS_DIR, MuLan
        from mufm.mulan.tokens import MuLanTokens
        from mufm.train.restore import load

        _record("mulan", mulan_dir, "mulan")
        tokens_dir = os.path.join(_record_dir(mulan_dir), TOKENS_DIR)
        if not os.path.isdir(tokens_dir):
            raise CascadeError(f"mulan run {mulan_dir}: no fitted tokens ({TOKENS_DIR}/); run "
                               f"`python -m mufm.mulan fit_tokens` first")
        tokens = MuLanTokens.load(tokens_dir)
        layouts = {name: _stage_layout(name, path) for name, path in
                   zip(STAGES, (semantic_dir, coarse_dir, fine_dir))}
        _, codec_configs = _record("codec", codec_dir, "codec")
        codec_cfg = codec_configs["codec"]
        if codec_cfg.sample_rate != codec_cfg.hop * ACOUSTIC_HZ:
            raise CascadeError(f"codec run {codec_dir}: {codec_cfg.sample_rate / codec_cfg.hop:g} "
                               f"frames per second, the stages' acoustic tokens are {ACOUSTIC_HZ} Hz")
        check_layouts((tokens.num_levels, tokens.codebook_size), layouts["semantic"],
                      layouts["coarse"], layouts["fine"],
                      (codec_cfg.num_levels, codec_cfg.codebook_size))
        stages = {name: (load(path, family="lm"), layouts[name]) for name, path in
                  zip(STAGES, (semantic_dir, coarse_dir, fine_dir))}
        return cls(mulan=MuLan.load(mulan_dir), stages=stages, codec=load_codec(codec_dir), **kwargs)

    @property
    def sample_rate(self) -> int:
        return int(self.codec.configs["codec"].sample_rate)

    def _keep(self, window: int) -> int:
        return min(int(round(window * self.overlap)), window - 1)

    def check_inputs(self, texts: Sequence[str], seconds: float) -> list[str]:
        return check_inputs(texts, seconds, self.max_seconds)

    def generate_tokens(self, texts: Sequence[str], seconds: float, *, seed: int = 0,
                        key: jax.Array | None = None, configs: dict | None = None,
                        progress: bool = True) -> dict:
        """Every stage's tokens for `texts`: {"mulan" [n, levels], "semantic" [n, frames at
        25 Hz], "acoustic" [n, 2 x frames, codec levels], "windows": {stage: [(Window,
        codes [n, frames, ...]) ...]}} (the windows as sampled, for inspection)."""
        texts = self.check_inputs(texts, seconds)
        configs = dict(DEFAULT_CONFIGS, **(configs or {}))
        unknown = set(configs) - set(STAGES)
        if unknown:
            raise CascadeError(f"configs for unknown stages {sorted(unknown)}; use {STAGES}")
        for name, config in configs.items():
            if not isinstance(config, SamplingConfig):
                raise CascadeError(f"configs[{name!r}] is a {type(config).__name__}, not a "
                                   f"SamplingConfig")
        key = jax.random.key(seed) if key is None else key
        semantic_frames = math.ceil(seconds * SEMANTIC_HZ - 1e-9)
        self.timings = {}
        t0 = time.perf_counter()
        mulan = np.asarray(self.mulan.tokens_text(texts))
        self.timings["mulan"] = time.perf_counter() - t0
        windows = {}
        semantic, windows["semantic"] = self._timed("semantic", self._semantic, mulan,
                                                    semantic_frames, configs["semantic"],
                                                    jax.random.fold_in(key, 1), progress)
        coarse, windows["coarse"] = self._timed("coarse", self._coarse, mulan, semantic,
                                                configs["coarse"], jax.random.fold_in(key, 2),
                                                progress)
        acoustic, windows["fine"] = self._timed("fine", self._fine, coarse, configs["fine"],
                                                jax.random.fold_in(key, 3), progress)
        return {"mulan": mulan, "semantic": semantic, "acoustic": acoustic, "windows": windows}

    def generate(self, texts: Sequence[str], seconds: float, **kwargs) -> np.ndarray:
        """float32 [n, round(seconds x sample_rate)] audio at the codec's rate (24 kHz) for
        the n captions; keywords as `generate_tokens` (seed or key, configs per stage,
        progress)."""
        from mufm.codec.tokenizer import decode_chunked

        tokens = self.generate_tokens(texts, seconds, **kwargs)
        t0 = time.perf_counter()
        audio = decode_chunked(*self.codec.parts, tokens["acoustic"])
        self.timings["codec"] = time.perf_counter() - t0
        return audio[:, :int(round(seconds * self.sample_rate))].astype(np.float32)

    # -- the stages ----------------------------------------------------------------------

    def _timed(self, name: str, fn: Callable, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[name] = time.perf_counter() - t0
        return out

    def _windows(self, name: str, plan: list[Window], examples: Callable, config, key,
                 progress: bool, unit: int = 1):
        """Samples each window of `plan` (in units of `unit` target frames) from
        `examples(window)`, checks the carried prefix came back verbatim, and yields
        (window in target frames, codes)."""
        layout = self._stages_layout(name)
        bar = _bar(name, len(plan), progress)
        try:
            for i, w in enumerate(plan):
                w = Window(w.start * unit, w.prefix * unit, w.frames * unit)
                exs, prefix = examples(w)
                codes = generate_stage(self._modules[name], layout, exs, w.frames, config,
                                       jax.random.fold_in(key, i), prefix_frames=w.prefix)
                if not np.array_equal(codes[:, :w.prefix], prefix):
                    raise AssertionError(f"{name} window {i}: the carried prefix changed")
                bar.update(1)
                yield w, codes
        finally:
            bar.close()

    def _stages_layout(self, name: str) -> StageLayout:
        return self.stages[name][1]

    def _semantic(self, mulan, frames, config, key, progress):
        layout = self._stages_layout("semantic")
        out = np.full((len(mulan), frames), MISSING, np.int64)

        def examples(w):
            prefix = out[:, w.start:w.start + w.prefix]
            return [{"mulan": m, "semantic": p} for m, p in zip(mulan, prefix)], prefix

        plan = plan_windows(frames, layout.target.frames, self._keep(layout.target.frames))
        done = []
        for w, codes in self._windows("semantic", plan, examples, config, key, progress):
            out[:, w.start:w.start + w.frames] = codes
            done.append((w, codes))
        return out, done

    def _coarse(self, mulan, semantic, config, key, progress):
        layout = self._stages_layout("coarse")
        span = layout.segments[1].frames  # semantic frames of a window
        levels = layout.target.num_levels
        out = np.full((len(mulan), 2 * semantic.shape[1], levels), MISSING, np.int64)

        def examples(w):
            s = w.start // 2  # whole semantic frames: the plan is in them
            prefix = out[:, w.start:w.start + w.prefix]
            return [{"mulan": m, "semantic": sem[s:s + span], "acoustic": p}
                    for m, sem, p in zip(mulan, semantic, prefix)], prefix

        plan = plan_windows(semantic.shape[1], span, self._keep(span))
        done = []
        for w, codes in self._windows("coarse", plan, examples, config, key, progress, unit=2):
            out[:, w.start:w.start + w.frames] = codes
            done.append((w, codes))
        return out, done

    def _fine(self, coarse, config, key, progress):
        layout = self._stages_layout("fine")
        window, first = layout.target.frames, layout.target.first_level
        b, frames, levels = coarse.shape
        out = np.full((b, frames, first + layout.target.num_levels), MISSING, np.int64)
        out[:, :, :levels] = coarse

        def examples(w):
            # The window's coarse codes condition it; its fine levels past the prefix are
            # still MISSING (windows go left to right).
            span = out[:, w.start:w.start + w.frames]
            return [{"acoustic": a} for a in span], span[:, :w.prefix, first:]

        plan = plan_windows(frames, window, self._keep(window))
        done = []
        for w, codes in self._windows("fine", plan, examples, config, key, progress):
            out[:, w.start:w.start + w.frames, first:] = codes
            done.append((w, codes))
        return out, done


def _record_dir(path: str) -> str:
    from mufm.train.restore import resolve

    return resolve(path)[0]


def _bar(name: str, total: int, progress: bool):
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="window", dynamic_ncols=True)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass
