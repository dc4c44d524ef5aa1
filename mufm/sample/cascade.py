"""Text to audio through the whole cascade (issue #14): caption -> MuLan text tokens ->
semantic tokens (stage 1) -> coarse acoustic levels (stage 2) -> fine levels (stage 3) ->
codec decoder -> 24 kHz waveform.

Every stage slides over the clip in windows of the length it was trained on
(mufm/sample/windows.py), carrying `overlap` of a window into the next as the target's
prefix:

- semantic: windows of the stage-1 target frames, prompt [mulan].
- coarse: windows of the stage-2 coarse frames C = 2 S (25 Hz semantic frame k is 50 Hz
  acoustic frames 2k, 2k + 1), conditioned on [mulan] and the semantic frames of the
  window's span; window starts are whole semantic frames.
- fine: windows of the stage-3 fine frames, conditioned on the coarse codes of the span.

The stages run interleaved, each pulling the windows it needs from the one before, and the
codec decodes the fine frames as they are finished: `Cascade.stream` yields audio while
the rest is still being sampled, and everything the cascade holds (`Track`s and the
decoder's state) is bounded by the windows, not by the length asked for. `generate` is
`stream` gathered.

- **Story mode** (`generate_story`): a list of (caption, seconds); the semantic and coarse
  windows never sample across a boundary, and each is conditioned on the caption of the
  part it samples, so the conditioning changes exactly at the boundaries (the carried
  prefix still comes from the part before: the music goes on, the caption changes).
- **Continuation** (`generate_continuation`): an audio prompt cut to whole semantic frames,
  tokenized by the semantic tokenizer and the codec; its semantic, coarse and fine tokens
  are the first frames of every stage's stream, kept verbatim, so every stage continues
  the prompt (the acoustic prefixes as much as the semantic one). Conditioned on captions
  if given, else on the MuLan tokens of the prompt's own audio.

`Cascade.load` reads every run's config and checks that the runs fit together before
loading any weights; every request is validated before any compute (the checks that need
no model, and `Request` itself, are mufm/sample/requests.py).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from mufm.lm.layouts import ACOUSTIC_HZ, MISSING, SEMANTIC_HZ, StageLayout
from mufm.sample.decode import SamplingConfig, generate_stage
from mufm.sample.requests import (MAX_SECONDS, MIN_PROMPT_SECONDS, SAMPLES_PER_SEMANTIC_FRAME,
                                  Request, Sampled, _check_samples, _check_seconds,
                                  check_inputs, check_story, frames_for, parse_story)
from mufm.sample.windows import CascadeError, Track, Window, plan_windows

# MusicLM's temperatures (Agostinelli et al. 2023, sec. 3.3): 1.0, 0.95, 0.4.
DEFAULT_CONFIGS = {
    "semantic": SamplingConfig(temperature=1.0),
    "coarse": SamplingConfig(temperature=0.95),
    "fine": SamplingConfig(temperature=0.4),
}
STAGES = ("semantic", "coarse", "fine")

__all__ = ["MAX_SECONDS", "Cascade", "CascadeError", "Request", "Sampled", "Window",
           "check_inputs", "check_layouts", "check_story", "parse_story", "plan_windows"]


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
    from mufm.lm.task import stage_layout

    _, configs = _record(role, path, "lm")
    layout = stage_layout(configs.get("data"))
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


# -- the cascade -----------------------------------------------------------------------------

@dataclasses.dataclass
class Cascade:
    """The trained models, loaded once. `generate`, `generate_story` and
    `generate_continuation` turn requests into audio; `stream` yields it as it is made."""
    mulan: Any  # mufm.mulan.embed.MuLan, with fitted tokens
    stages: dict  # name -> (LoadedModel, StageLayout), for semantic, coarse, fine
    codec: Any  # LoadedModel of the codec
    semantic_tokenizer: Any = None  # mufm.semantic.tokens.SemanticTokenizer: continuation only
    overlap: float = 0.5  # of a window, carried into the next one as the target's prefix
    max_seconds: float = MAX_SECONDS
    configs: dict | None = None  # stage -> SamplingConfig; DEFAULT_CONFIGS where missing
    mesh: Any = None  # a jax Mesh: each window's rows split over its data axis

    def __post_init__(self):
        if not 0 <= self.overlap < 1:
            raise CascadeError(f"overlap={self.overlap}: must be in [0, 1)")
        if not self.max_seconds > 0:
            raise CascadeError(f"max_seconds={self.max_seconds}: must be > 0")
        self.configs = _sampling_configs(DEFAULT_CONFIGS, self.configs)
        # Modules merged once: `generate_stage` would merge one per window otherwise.
        self._modules = {name: loaded.module() for name, (loaded, _) in self.stages.items()}
        self.timings: dict[str, float] = {}
        self.held: dict[str, int] = {}  # the most frames each track held in the last run
        self.last_run: _Run | None = None  # the request being (or last) generated

    @classmethod
    def load(cls, mulan_dir: str, semantic_dir: str, coarse_dir: str, fine_dir: str,
             codec_dir: str, *, semantic_tokenizer: str | None = None,
             semantic_tokens: str | None = None, **kwargs) -> "Cascade":
        """Checks the runs fit together from their configs alone, then loads the weights.
        `semantic_tokenizer` (a semantic run; its k-means in `semantic_tokens`, default
        <run>/semantic_tokens) is needed for continuations only."""
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
        tokenizer = None
        if semantic_tokenizer:
            tokenizer = _semantic_tokenizer(semantic_tokenizer, semantic_tokens,
                                            layouts["semantic"].target.codebook_size)
        stages = {name: (load(path, family="lm"), layouts[name]) for name, path in
                  zip(STAGES, (semantic_dir, coarse_dir, fine_dir))}
        return cls(mulan=MuLan.load(mulan_dir), stages=stages, codec=load_codec(codec_dir),
                   semantic_tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_runs(cls, runs: dict, **kwargs) -> "Cascade":
        """`load` from {role: run dir} (roles mulan, semantic, coarse, fine, codec and,
        optionally, semantic_tokenizer: what `random_runs.write_cascade` returns)."""
        missing = [r for r in ("mulan", *STAGES, "codec") if r not in runs]
        if missing:
            raise CascadeError(f"runs {sorted(runs)}: no run for {missing}")
        return cls.load(runs["mulan"], *(runs[name] for name in STAGES), runs["codec"],
                        semantic_tokenizer=runs.get("semantic_tokenizer"), **kwargs)

    @property
    def sample_rate(self) -> int:
        return int(self.codec.configs["codec"].sample_rate)

    def _keep(self, window: int) -> int:
        return min(int(round(window * self.overlap)), window - 1)

    def plans(self, frames: int, *, given: int = 0, cuts: Sequence[int] = ()) -> dict:
        """Each stage's windows over a clip of `frames` semantic frames, of which `given`
        exist (an audio prompt), never sampling across `cuts` (story boundaries). The
        semantic and coarse plans are in semantic frames, the fine one in acoustic frames;
        the exported programs (mufm/export/programs.py) unroll these same plans."""
        layouts = {name: layout for name, (_, layout) in self.stages.items()}
        semantic = layouts["semantic"].target.frames
        coarse = layouts["coarse"].segments[1].frames  # the semantic frames of its window
        fine = layouts["fine"].target.frames
        return {"semantic": plan_windows(frames, semantic, self._keep(semantic), given=given,
                                         cuts=cuts),
                "coarse": plan_windows(frames, coarse, self._keep(coarse), given=given, cuts=cuts),
                "fine": plan_windows(2 * frames, fine, self._keep(fine), given=2 * given)}

    def check_inputs(self, texts: Sequence[str], seconds: float) -> list[str]:
        return check_inputs(texts, seconds, self.max_seconds)

    # -- requests: checked before any compute ---------------------------------------------

    def text_request(self, texts: Sequence[str], seconds: float, num_samples: int = 1) -> Request:
        """`num_samples` clips per caption (caption-major) of `seconds` each."""
        texts = self.check_inputs(texts, seconds)
        rows = [t for t in texts for _ in range(_check_samples(num_samples))]
        mulan = np.asarray(self._timed_mulan(lambda: self.mulan.tokens_text(rows)))
        return Request(texts=[[t] for t in rows], mulan=mulan[:, None], cuts=(),
                       frames=frames_for(seconds),
                       samples=int(round(seconds * self.sample_rate)))

    def story_request(self, story: Sequence[tuple[str, float]], num_samples: int = 1) -> Request:
        """One clip per sample that plays the story's parts in turn, each part conditioned
        on its caption; the parts' lengths are rounded to whole semantic frames (40 ms)."""
        texts, ends = check_story(story, self.max_seconds)
        n = _check_samples(num_samples)
        parts = np.asarray(self._timed_mulan(lambda: self.mulan.tokens_text(texts)))
        return Request(texts=[texts] * n, mulan=np.repeat(parts[None], n, axis=0),
                       cuts=tuple(ends[:-1]), frames=ends[-1],
                       samples=ends[-1] * self.sample_rate // SEMANTIC_HZ)

    def continuation_request(self, prompt, seconds: float, *, sample_rate: int | None = None,
                             texts: Sequence[str] | None = None, num_samples: int = 1) -> Request:
        """`seconds` more after an audio prompt (a file path, or a mono waveform at
        `sample_rate`), cut to whole semantic frames and kept verbatim at the start of
        every stream; conditioned on `texts` (num_samples clips per caption) or, without
        them, on the prompt's own MuLan audio tokens."""
        from mufm.codec.tokenizer import encode_chunked

        if self.semantic_tokenizer is None:
            raise CascadeError("a continuation needs the semantic tokenizer: load the cascade "
                               "with semantic_tokenizer=<semantic run> (GenerateConfig."
                               "semantic_tokenizer, --semantic_tokenizer)")
        wave = self._prompt_waveform(prompt, sample_rate)
        p = len(wave) // SAMPLES_PER_SEMANTIC_FRAME
        prompt_seconds = p / SEMANTIC_HZ
        if prompt_seconds < MIN_PROMPT_SECONDS:
            raise CascadeError(f"the audio prompt is {len(wave) / self.sample_rate:.2f} s long; "
                               f"a continuation needs at least {MIN_PROMPT_SECONDS:g} s")
        _check_seconds(seconds, self.max_seconds)
        _check_seconds(prompt_seconds + seconds, self.max_seconds,
                       "the prompt's seconds + seconds")
        n = _check_samples(num_samples)
        if texts is not None:
            texts = check_inputs(texts, seconds, self.max_seconds)
        wave = wave[:p * SAMPLES_PER_SEMANTIC_FRAME]
        t0 = time.perf_counter()
        semantic = np.asarray(self.semantic_tokenizer.encode_chunked(wave), np.int64)[:p]
        acoustic = np.asarray(encode_chunked(*self.codec.parts, wave[None])[0], np.int64)[:2 * p]
        if texts is None:
            mulan = np.asarray(self.mulan.tokens_audio(wave))[None, None].repeat(n, axis=0)
            rows = [[] for _ in range(n)]
        else:
            captions = [t for t in texts for _ in range(n)]
            mulan = np.asarray(self.mulan.tokens_text(captions))[:, None]
            rows = [[t] for t in captions]
        # The prompt's three tokenizers and the conditioning, together.
        self.timings = {"prompt": time.perf_counter() - t0}
        m = len(mulan)
        return Request(texts=rows, mulan=mulan, cuts=(),
                       frames=p + frames_for(seconds),
                       samples=len(wave) + int(round(seconds * self.sample_rate)),
                       prompt_semantic=np.repeat(semantic[None], m, axis=0),
                       prompt_acoustic=np.repeat(acoustic[None], m, axis=0))

    def _prompt_waveform(self, prompt, sample_rate: int | None) -> np.ndarray:
        from mufm.audio.decode import DecodePolicy, load, waveform_problem
        from mufm.audio.io import AudioReadError
        from mufm.audio.resample import resample

        if isinstance(prompt, (str, os.PathLike)):
            try:
                return load(os.fspath(prompt), policy=DecodePolicy(sample_rate=self.sample_rate,
                                                                   min_seconds=0.0))
            except (AudioReadError, OSError, RuntimeError) as e:
                raise CascadeError(f"audio prompt {prompt}: unreadable ({e})") from None
        wave = np.asarray(prompt)
        if wave.ndim == 2 and 1 in wave.shape:
            wave = wave.reshape(-1)
        if wave.ndim != 1 or sample_rate is None:
            raise CascadeError(f"an audio prompt array must be mono [samples] with its "
                               f"sample_rate, got shape {wave.shape}, sample_rate={sample_rate}")
        problem = waveform_problem(wave, sample_rate=sample_rate, expected_rate=sample_rate)
        if problem:
            raise CascadeError(f"audio prompt: {problem}")
        wave = wave.astype(np.float32)
        return wave if sample_rate == self.sample_rate else resample(wave, sample_rate,
                                                                     self.sample_rate)

    def _timed_mulan(self, fn):
        t0 = time.perf_counter()
        out = fn()
        self.timings = {"mulan": time.perf_counter() - t0}
        return out

    # -- running a request ------------------------------------------------------------------

    def stream(self, request: Request, *, seed: int = 0, key: jax.Array | None = None,
               configs: dict | None = None, progress: bool = True) -> Iterator[np.ndarray]:
        """float32 [rows, samples] pieces of the request's audio in order, each yielded as
        soon as the fine windows under it are finished and decoded; together they are
        exactly `request.samples` long. `configs` overrides the sampling per stage."""
        run = _Run(self, request, _sampling_configs(self.configs, configs),
                   jax.random.key(seed) if key is None else key, progress, record=False)
        self.last_run = run
        yield from run.audio()

    def tokens(self, request: Request, *, seed: int = 0, key: jax.Array | None = None,
               configs: dict | None = None, progress: bool = True) -> dict:
        """Every stream of the request, no audio: {"mulan" [rows, parts, levels],
        "semantic" [rows, frames], "acoustic" [rows, 2 x frames, codec levels], "windows":
        {stage: [Sampled ...]}} (the windows as sampled, for inspection)."""
        run = _Run(self, request, _sampling_configs(self.configs, configs),
                   jax.random.key(seed) if key is None else key, progress, record=True)
        self.last_run = run
        for _ in run.audio(decode=False):
            pass
        return {"mulan": request.mulan, "semantic": run.tracks["semantic"].everything(),
                "acoustic": np.concatenate([run.tracks["coarse"].everything(),
                                            run.tracks["fine"].everything()], axis=-1),
                "windows": run.sampled}

    def generate_tokens(self, texts: Sequence[str], seconds: float, *, num_samples: int = 1,
                        **kwargs) -> dict:
        """`tokens` of a text request."""
        return self.tokens(self.text_request(texts, seconds, num_samples), **kwargs)

    def generate(self, texts: Sequence[str], seconds: float, *, num_samples: int = 1,
                 **kwargs) -> np.ndarray:
        """float32 [captions x num_samples, round(seconds x sample_rate)] audio at the
        codec's rate (24 kHz); keywords as `stream` (seed or key, configs, progress)."""
        return _gather(self.stream(self.text_request(texts, seconds, num_samples), **kwargs))

    def generate_story(self, story: Sequence[tuple[str, float]], *, num_samples: int = 1,
                       **kwargs) -> np.ndarray:
        """[num_samples, samples] audio of a story: [(caption, seconds), ...] in turn."""
        return _gather(self.stream(self.story_request(story, num_samples), **kwargs))

    def generate_continuation(self, prompt, seconds: float, *, sample_rate: int | None = None,
                              texts: Sequence[str] | None = None, num_samples: int = 1,
                              **kwargs) -> np.ndarray:
        """[rows, samples] audio: the prompt (as the codec reconstructs it, cut to whole
        40 ms frames) followed by `seconds` of continuation."""
        request = self.continuation_request(prompt, seconds, sample_rate=sample_rate,
                                            texts=texts, num_samples=num_samples)
        return _gather(self.stream(request, **kwargs))


class _Run:
    """One request through the stages. Each stage samples its windows in order, pulling the
    windows it needs from the stage before; `audio()` drives the fine stage and decodes
    what is finished, and after every window each track forgets what no later window
    (or the decoder) reads."""

    def __init__(self, cascade: Cascade, request: Request, configs: dict, key: jax.Array,
                 progress: bool, record: bool):
        self.c, self.r, self.configs, self.record = cascade, request, configs, record
        self.keys = {name: jax.random.fold_in(key, i + 1) for i, name in enumerate(STAGES)}
        self.layouts = {name: cascade.stages[name][1] for name in STAGES}
        coarse, fine = self.layouts["coarse"].target, self.layouts["fine"].target
        n, frames, p = request.rows, request.frames, request.prompt_frames
        self.tracks = {"semantic": Track(n, keep_all=record),
                       "coarse": Track(n, (coarse.num_levels,), keep_all=record),
                       "fine": Track(n, (fine.num_levels,), keep_all=record)}
        if p:
            self.tracks["semantic"].write(0, request.prompt_semantic)
            self.tracks["coarse"].write(0, request.prompt_acoustic[..., :coarse.num_levels])
            self.tracks["fine"].write(0, request.prompt_acoustic[..., coarse.num_levels:])
        self.plans = cascade.plans(frames, given=p, cuts=request.cuts)
        # The decoder's chunk: the frames a steady fine window adds.
        self.chunk = max(1, fine.frames - cascade._keep(fine.frames))
        self.done = dict.fromkeys(STAGES, 0)
        self.decoded = 0  # acoustic frames handed to the decoder
        self.sampled = {name: [] for name in STAGES}
        self.progress = progress
        self.steps = {"semantic": self._semantic, "coarse": self._coarse, "fine": self._fine}

    def audio(self, decode: bool = True) -> Iterator[np.ndarray]:
        from mufm.codec.tokenizer import StreamDecoder

        c = self.c
        c.timings = dict.fromkeys(STAGES, 0.0) | {k: v for k, v in c.timings.items()
                                                   if k in ("mulan", "prompt")}
        if decode:
            c.timings["codec"] = 0.0
            decoder = StreamDecoder(*c.codec.parts, self.r.rows, chunk_frames=self.chunk)
        self.bars = {name: _bar(name, len(self.plans[name]), self.progress, i)
                     for i, name in enumerate(STAGES)}
        emitted = 0
        try:
            while self.done["fine"] < len(self.plans["fine"]):
                self._fine()
                if not decode:
                    self.decoded = self.tracks["fine"].end
                    self._forget()
                    continue
                t0 = time.perf_counter()
                last = self.done["fine"] == len(self.plans["fine"])
                ready = self.tracks["fine"].end
                codes = np.concatenate([self.tracks["coarse"].read(self.decoded, ready),
                                        self.tracks["fine"].read(self.decoded, ready)], axis=-1)
                self.decoded = ready
                self._forget()
                wave = decoder.flush(codes) if last else decoder.push(codes)
                wave = wave[:, :max(0, self.r.samples - emitted)]
                c.timings["codec"] += time.perf_counter() - t0
                if wave.shape[1]:
                    emitted += wave.shape[1]
                    yield wave.astype(np.float32, copy=False)
            if decode and emitted != self.r.samples:
                raise AssertionError(f"decoded {emitted} samples of {self.r.samples}")
        finally:
            for bar in self.bars.values():
                bar.close()
            c.held = {name: t.peak for name, t in self.tracks.items()}

    # -- one window of each stage ---------------------------------------------------------

    def _sample(self, name: str, w: Window, examples: list, prefix: np.ndarray, unit: int,
                part: int) -> tuple[Window, np.ndarray]:
        """Samples window `w` (in units of `unit` target frames) and checks the prefix came
        back verbatim: (the window in target frames, codes)."""
        t0 = time.perf_counter()
        i = self.done[name]
        w = Window(w.start * unit, w.prefix * unit, w.frames * unit)
        codes = generate_stage(self.c._modules[name], self.layouts[name], examples, w.frames,
                               self.configs[name], jax.random.fold_in(self.keys[name], i),
                               prefix_frames=w.prefix, mesh=self.c.mesh)
        if not np.array_equal(codes[:, :w.prefix], prefix):
            raise AssertionError(f"{name} window {i}: the carried prefix changed")
        if self.record:
            self.sampled[name].append(Sampled(w, codes, part))
        self.done[name] += 1
        self.bars[name].update(1)
        self.c.timings[name] += time.perf_counter() - t0
        return w, codes

    def _window(self, name: str) -> Window:
        return self.plans[name][self.done[name]]

    def _until(self, name: str, frames: int) -> None:
        """Samples `name`'s windows until its track holds frames [.., frames)."""
        while self.tracks[name].end < frames:
            if self.done[name] == len(self.plans[name]):
                raise AssertionError(f"{name}: frame {frames} asked for past its plan")
            self.steps[name]()

    def _semantic(self) -> None:
        w = self._window("semantic")
        part = self.r.part(w.first_new)
        prefix = self.tracks["semantic"].read(w.start, w.first_new)
        examples = [{"mulan": m, "semantic": p} for m, p in zip(self.r.mulan[:, part], prefix)]
        w, codes = self._sample("semantic", w, examples, prefix, 1, part)
        self.tracks["semantic"].write(w.start, codes)

    def _coarse(self) -> None:
        w = self._window("coarse")  # in semantic frames
        self._until("semantic", w.end)
        part = self.r.part(w.first_new)
        semantic = self.tracks["semantic"].read(w.start, w.end)
        prefix = self.tracks["coarse"].read(2 * w.start, 2 * w.first_new)
        examples = [{"mulan": m, "semantic": s, "acoustic": p}
                    for m, s, p in zip(self.r.mulan[:, part], semantic, prefix)]
        w, codes = self._sample("coarse", w, examples, prefix, 2, part)
        self.tracks["coarse"].write(w.start, codes)

    def _fine(self) -> None:
        w = self._window("fine")
        self._until("coarse", w.end)
        coarse = self.tracks["coarse"].read(w.start, w.end)
        prefix = self.tracks["fine"].read(w.start, w.first_new)
        # The window's coarse codes condition it; its fine levels past the prefix are
        # MISSING, as `generate_stage` expects of a target prefix.
        span = np.full((*coarse.shape[:2], coarse.shape[2] + prefix.shape[2]), MISSING, np.int64)
        span[..., :coarse.shape[2]] = coarse
        span[:, :w.prefix, coarse.shape[2]:] = prefix
        w, codes = self._sample("fine", w, [{"acoustic": a} for a in span], prefix, 1,
                                self.r.part(w.first_new // 2))
        self.tracks["fine"].write(w.start, codes)

    def _next_start(self, name: str, default: int) -> int:
        i, plan = self.done[name], self.plans[name]
        return plan[i].start if i < len(plan) else default

    def _forget(self) -> None:
        frames = self.r.frames
        self.tracks["semantic"].forget(min(self._next_start("semantic", frames),
                                           self._next_start("coarse", frames)))
        fine_next = self._next_start("fine", 2 * frames)
        self.tracks["coarse"].forget(min(2 * self._next_start("coarse", frames), fine_next,
                                         self.decoded))
        self.tracks["fine"].forget(min(fine_next, self.decoded))


def _gather(chunks: Iterator[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(chunks), axis=1)


def _sampling_configs(base: dict, changes: dict | None) -> dict:
    configs = dict(base, **(changes or {}))
    unknown = set(configs) - set(STAGES)
    if unknown:
        raise CascadeError(f"configs for unknown stages {sorted(unknown)}; use {STAGES}")
    for name, config in configs.items():
        if not isinstance(config, SamplingConfig):
            raise CascadeError(f"configs[{name!r}] is a {type(config).__name__}, not a "
                               f"SamplingConfig")
    return configs


def _semantic_tokenizer(path: str, tokens_dir: str | None, codes: int):
    from mufm.semantic.tokens import SemanticTokenizer, TokensNotFoundError

    _record("semantic tokenizer", path, "semantic")
    try:
        tokenizer = SemanticTokenizer.load(path, tokens_dir)
    except (TokensNotFoundError, OSError, ValueError) as e:
        raise CascadeError(f"semantic tokenizer run {path}: {e}") from None
    if tokenizer.num_clusters != codes:
        raise CascadeError(f"semantic tokenizer run {path}: {tokenizer.num_clusters} clusters, "
                           f"the semantic stage samples {codes} codes")
    if tokenizer.cfg.hop != SAMPLES_PER_SEMANTIC_FRAME:
        raise CascadeError(f"semantic tokenizer run {path}: a hop of {tokenizer.cfg.hop} "
                           f"samples, the stages' semantic tokens are {SEMANTIC_HZ} Hz")
    return tokenizer


def _record_dir(path: str) -> str:
    from mufm.train.restore import resolve

    return resolve(path)[0]


def _bar(name: str, total: int, progress: bool, position: int):
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name:8s}", unit="window", position=position,
                dynamic_ncols=True, leave=True)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass
