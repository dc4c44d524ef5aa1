"""Semantic tokens: k-means ids of one layer of a trained semantic model, 25 per second.

Fit (`fit_tokens`, `python -m mufm.semantic fit_kmeans`): embeddings of layer `layer` of
the run's newest checkpoint on random crops of the train split of a corpus, at most
`max_frames` frames, then the mini-batch k-means of `mufm.layers.kmeans` (per-dimension
normalisation, greedy k-means++ seeds, Sculley updates, starved clusters reseeded):

1. crops: a clip drawn with probability proportional to its length (every second of the
   split equally likely), an offset uniform within it, `crop_seconds` long (default the
   run's training crop); a clip shorter than a crop is zero-padded and its padded frames
   get weight 0 (they are never stored);
2. embedding, jitted, a batch of `batch_crops` crops at a time, into a host buffer of
   valid frames; the normaliser's moments summed on the way;
3. seeds from the first `init_frames` frames of a shuffled order, then `epochs` passes of
   mini-batches of `minibatch_frames` frames (the last one of a pass padded with weight-0
   rows, so one program serves them all). Embedding costs far more than a k-means step,
   so the frames are embedded once and clustered in several passes.

The fitted state is saved with the run, loadable on its own:
`<model_dir>/semantic_tokens/centroids.npz` (`centroids` [K, D] in normalised units,
`mean`, `std` [D], `counts` [K]) and `tokens.json` (layer, K, the semantic checkpoint
step, frames, the inertia curve, where the frames came from).

Default layer (`default_layer`): MusicLM takes layer 7 of the 12-layer MLM module of its
24-layer w2v-BERT (`embed` layer C + 7 = 19 of `semantic_paper`). Smaller models keep
that relative depth: C + max(1, round(7 M / 12)) for M MLM blocks, e.g. layer 6 (the
2nd of 4 MLM blocks, the middle of the module) for `semantic_base`, 2 for `semantic_tiny`.

Encode (`SemanticTokenizer`): `encode(waveform[b, n], lengths)` -> ids [b, n // 960]
int32, jitted; padded frames (j >= lengths // 960) are `PAD_ID`. `encode_chunked(
waveform[n])` walks a file of any length in windows (next section).

Chunked encoding. The conformer attends over the whole input, so no split into chunks
can equal one pass over a long file; it was also trained on crops of one length (4 s for
`semantic_corpus_cpu`), and its relative positions past `relpos_max_distance` share one
bucket. So long files go in windows of the training crop length (`window_frames`), each
reaching `context_frames` past the frames it keeps on both sides (default a quarter of
the window: 1 s of a 4 s window, so half of every window is kept and each frame is
computed twice). Window k starts at frame k S, S = window - 2 context, and keeps
frames [k S + context, k S + S + context), except that the first keeps from frame 0 and
the last to the end of the file. Windows are zero-padded past the file's end with their
`lengths` set, batched `batch_windows` at a time (rows of length 0 fill the last batch).
What holds exactly:

- every id is the one `encode` gives for the window that keeps it, alone in a batch of
  `batch_windows` rows (each row's result depends on that row only); for a file within
  one window that is `encode` of the file zero-padded to the window, with `lengths`;
- not whole-file encoding: the last frames of a window see zeros where the file goes
  on and its first frames a reflect-padded log-mel edge, and attention sees only the
  window. `python -m mufm.semantic evaluate` reports how often chunked and whole-file ids
  agree on held-out audio (the README quotes it).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.audio.decode import waveform_problem
from mufm.layers import kmeans

TOKENS_DIR = "semantic_tokens"
CENTROIDS = "centroids.npz"
META = "tokens.json"
FORMAT = 1
PAD_ID = -1  # the id of a padded frame (j >= lengths // hop)


class BadAudioError(ValueError):
    """A waveform the tokenizer cannot take, with the reason."""


class TokensNotFoundError(FileNotFoundError):
    """No fitted k-means with the run (or not one this code reads)."""


def default_layer(cfg) -> int:
    """MusicLM's relative depth in the MLM module (module docstring): C + max(1, round(7 M / 12))."""
    if cfg.mlm_layers == 0:
        return cfg.contrastive_layers
    return cfg.contrastive_layers + max(1, int(math.floor(7 * cfg.mlm_layers / 12 + 0.5)))


def check_waveform(waveform, *, hop: int, batched: bool) -> np.ndarray:
    """Host-side validation: float, finite, non-empty, mono ([b, n] when `batched`, else
    [n]) and at least one frame (`hop` samples) long; returned as float32."""
    arr = np.asarray(waveform)
    if not batched and arr.ndim != 1:
        raise BadAudioError(f"wrong_shape: waveform must be [samples] (mono), got shape {arr.shape}")
    problem = waveform_problem(arr if batched else arr[None], batched=True)
    if problem:
        raise BadAudioError(str(problem))
    if arr.shape[-1] < hop:
        raise BadAudioError(f"too_short: {arr.shape[-1]} samples is less than one {hop}-sample "
                            f"frame ({hop / 24_000 * 1000:g} ms at 24 kHz)")
    return arr.astype(np.float32, copy=False)


# -- jitted programs (graphdef and layer static: one compile per shape) ----------------------
@functools.partial(jax.jit, static_argnames=("graphdef", "layer"))
def embed(graphdef, params, rest, waveform: jax.Array, lengths: jax.Array | None, layer: int):
    """[b, n] -> [b, n // hop, d_model] fp32, layer `layer`."""
    model = nnx.merge(graphdef, params, rest)
    return model.embed(waveform, layer, lengths).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer"))
def encode(graphdef, params, rest, state: kmeans.KMeansState, waveform: jax.Array,
           lengths: jax.Array | None, layer: int):
    """[b, n] -> (ids [b, n // hop] int32, PAD_ID at padded frames; embeddings)."""
    model = nnx.merge(graphdef, params, rest)
    x = model.embed(waveform, layer, lengths).astype(jnp.float32)
    b, t, d = x.shape
    ids, _ = kmeans.assign(state, x.reshape(b * t, d))
    valid = model.valid_frames(waveform.shape[-1], lengths, b) > 0
    return jnp.where(valid, ids.reshape(b, t), PAD_ID), x


@jax.jit
def _assign(state: kmeans.KMeansState, x: jax.Array):
    return kmeans.assign(state, x)


def assign_frames(state: kmeans.KMeansState, frames: np.ndarray, block: int = 8192
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Host frames [m, d] -> (ids [m] int32, squared distances [m]), `block` rows at a time
    (one compile for the full blocks, one for the tail)."""
    ids, dist = [], []
    for s in range(0, len(frames), block):
        i, d = _assign(state, jnp.asarray(frames[s:s + block], jnp.float32))
        ids.append(np.asarray(i))
        dist.append(np.asarray(d))
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(ids), np.concatenate(dist)


# -- windows of a long file ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Window:
    start: int  # first frame of the window in the file
    keep_lo: int  # frames [keep_lo, keep_hi) of the file are taken from this window
    keep_hi: int


def windows(num_frames: int, window_frames: int, context_frames: int) -> list[Window]:
    """The windows covering frames [0, num_frames) (module docstring)."""
    if window_frames < 1 or context_frames < 0 or window_frames - 2 * context_frames < 1:
        raise ValueError(f"window_frames={window_frames}, context_frames={context_frames}: "
                         f"need window - 2 x context >= 1")
    stride = window_frames - 2 * context_frames
    out, k = [], 0
    while True:
        start = k * stride
        lo = 0 if k == 0 else start + context_frames
        hi = start + window_frames - context_frames
        if start + window_frames >= num_frames:  # this window reaches the end
            out.append(Window(start, lo, num_frames))
            return out
        out.append(Window(start, lo, hi))
        k += 1


# -- the tokenizer ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SemanticTokenizer:
    """A semantic run's model plus its fitted k-means. `SemanticTokenizer.load(model_dir)`."""
    model: object  # mufm.train.restore.LoadedModel of the semantic run
    state: kmeans.KMeansState
    layer: int
    meta: dict

    @classmethod
    def load(cls, model_dir: str, tokens_dir: str | None = None) -> "SemanticTokenizer":
        """The k-means saved in `tokens_dir` (default <model_dir>/semantic_tokens) and the
        semantic checkpoint it was fitted on (the step recorded there)."""
        from mufm.train.restore import CheckpointNotFoundError, WrongFamilyError, load, resolve

        try:
            run_dir, _ = resolve(model_dir, family="semantic")
        except CheckpointNotFoundError as e:
            raise TokensNotFoundError(str(e)) from None
        state, meta = load_centroids(tokens_dir or os.path.join(run_dir, TOKENS_DIR))
        try:
            loaded = load(run_dir, meta["step"], family="semantic")
        except (CheckpointNotFoundError, WrongFamilyError) as e:
            raise TokensNotFoundError(f"{e} (the k-means was fitted on step {meta['step']})") from None
        if meta["d_model"] != loaded.configs["model"].d_model:
            raise TokensNotFoundError(f"centroids of width {meta['d_model']} do not fit a model "
                                      f"of width {loaded.configs['model'].d_model}")
        return cls(model=loaded, state=state, layer=int(meta["layer"]), meta=meta)

    @property
    def cfg(self):
        return self.model.configs["model"]

    @property
    def num_clusters(self) -> int:
        return int(self.state.centroids.shape[0])

    @property
    def window_frames(self) -> int:
        """The training crop in frames (the default window of `encode_chunked`)."""
        return max(1, self.model.configs["data"].sequence_length // self.cfg.hop)

    def encode(self, waveform, lengths=None) -> np.ndarray:
        """[b, n] float -> ids [b, n // 960] int32 (PAD_ID past `lengths // 960`)."""
        wave = check_waveform(waveform, hop=self.cfg.hop, batched=True)
        lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
        ids, _ = encode(*self.model.parts, self.state, jnp.asarray(wave), lengths, self.layer)
        return np.asarray(ids)

    def embed(self, waveform, lengths=None) -> np.ndarray:
        """[b, n] -> embeddings of the tokenizer's layer [b, n // 960, d_model]."""
        wave = check_waveform(waveform, hop=self.cfg.hop, batched=True)
        lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
        return np.asarray(embed(*self.model.parts, jnp.asarray(wave), lengths, self.layer))

    def assign(self, x) -> np.ndarray:
        """Frames [m, d_model] -> ids [m] int32."""
        return assign_frames(self.state, np.asarray(x))[0]

    def encode_chunked(self, waveform, *, window_frames: int | None = None,
                       context_frames: int | None = None, batch_windows: int = 8,
                       with_embeddings: bool = False,
                       progress: Callable[[int, int], None] | None = None):
        """ids [n // 960] of a file [n] of any length, window by window (module docstring);
        with `with_embeddings`, (ids, embeddings [n // 960, d_model]). `progress(done,
        total)` after each batch of windows, in frames."""
        hop = self.cfg.hop
        wave = check_waveform(waveform, hop=hop, batched=False)
        w = window_frames or self.window_frames
        c = w // 4 if context_frames is None else context_frames
        total = len(wave) // hop
        plan = windows(total, w, c)
        ids = np.zeros(total, np.int32)
        emb = np.zeros((total, self.cfg.d_model), np.float32) if with_embeddings else None
        for first in range(0, len(plan), batch_windows):
            group = plan[first:first + batch_windows]
            rows = np.zeros((batch_windows, w * hop), np.float32)
            lengths = np.zeros(batch_windows, np.int32)
            for r, win in enumerate(group):
                piece = wave[win.start * hop:(win.start + w) * hop]
                rows[r, :len(piece)], lengths[r] = piece, len(piece)
            got, x = encode(*self.model.parts, self.state, jnp.asarray(rows), jnp.asarray(lengths),
                            self.layer)
            got = np.asarray(got)
            x = np.asarray(x) if with_embeddings else None
            for r, win in enumerate(group):
                sl = slice(win.keep_lo - win.start, win.keep_hi - win.start)
                ids[win.keep_lo:win.keep_hi] = got[r, sl]
                if with_embeddings:
                    emb[win.keep_lo:win.keep_hi] = x[r, sl]
            if progress:
                progress(group[-1].keep_hi, total)
        return (ids, emb) if with_embeddings else ids


# -- saving and loading the fitted k-means ------------------------------------------------
def save_centroids(directory: str, state: kmeans.KMeansState, meta: dict) -> tuple[str, str]:
    """Writes centroids.npz and tokens.json into `directory` (each atomically)."""
    os.makedirs(directory, exist_ok=True)
    npz, js = os.path.join(directory, CENTROIDS), os.path.join(directory, META)
    tmp = npz + ".tmp.npz"
    np.savez(tmp, centroids=np.asarray(state.centroids), mean=np.asarray(state.mean),
             std=np.asarray(state.std), counts=np.asarray(state.counts))
    os.replace(tmp, npz)
    with open(js + ".tmp", "w") as f:
        json.dump(dict(meta, format=FORMAT), f, indent=1, sort_keys=True)
    os.replace(js + ".tmp", js)
    return npz, js


def load_centroids(directory: str) -> tuple[kmeans.KMeansState, dict]:
    npz, js = os.path.join(directory, CENTROIDS), os.path.join(directory, META)
    if not (os.path.isfile(npz) and os.path.isfile(js)):
        raise TokensNotFoundError(f"{directory}: no fitted k-means ({CENTROIDS} and {META}); run "
                                  f"`python -m mufm.semantic fit_kmeans --model_dir=...` first")
    with open(js) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise TokensNotFoundError(f"{js}: format {meta.get('format')}, this code reads {FORMAT}")
    with np.load(npz) as z:
        state = kmeans.KMeansState(centroids=jnp.asarray(z["centroids"]),
                                   counts=jnp.asarray(z["counts"]), mean=jnp.asarray(z["mean"]),
                                   std=jnp.asarray(z["std"]), step=jnp.zeros((), jnp.int32))
    return state, meta


# -- fitting ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FitConfig:
    num_clusters: int = 1024  # K (MusicLM: 1024)
    layer: int | None = None  # None: default_layer
    max_frames: int = 200_000  # ~2.2 h of audio at 25 Hz
    crop_seconds: float | None = None  # None: the run's training crop
    batch_crops: int = 8
    minibatch_frames: int = 4096
    init_frames: int | None = None  # None: max(8 K, minibatch_frames), at most all frames
    epochs: int = 4
    reassign_ratio: float = 0.01
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class KMeansFit:
    state: kmeans.KMeansState
    curve: list[dict]  # per epoch: mean inertia before each step's update, reseeded clusters
    inertia: float  # mean squared distance (normalised units) of all frames to their centroid


@functools.partial(jax.jit, static_argnames=("reassign_ratio",))
def _step(state, key, x, w, reassign_ratio):
    return kmeans.minibatch_step(state, key, x, w, reassign_ratio=reassign_ratio)


@jax.jit
def _moments(x, w):
    return kmeans.moments(x, w)


def fit_frames(frames: np.ndarray, cfg: FitConfig, *, progress: bool = True,
               log: Callable[[str], None] = print) -> KMeansFit:
    """Mini-batch k-means of host frames [m, d] (every row a real frame): the normaliser
    from their moments, seeds, `cfg.epochs` shuffled passes. Used for the semantic
    embeddings and for the evaluation's log-mel baseline alike."""
    from tqdm.auto import tqdm

    m, d = frames.shape
    k = cfg.num_clusters
    if m < k:
        raise ValueError(f"{m} frames cannot seed {k} clusters: lower --num_clusters or give "
                         f"more audio (--max_frames)")
    count, total, squares = _moments(jnp.asarray(frames), jnp.ones(m, jnp.float32))
    mean, std = kmeans.normaliser(count, total, squares)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(m)
    init = min(m, cfg.init_frames or max(8 * k, cfg.minibatch_frames))
    init_key, key = jax.random.split(jax.random.key(cfg.seed))
    state = kmeans.init_minibatch(init_key, jnp.asarray(frames[order[:init]]), None, k, mean, std)
    b = min(cfg.minibatch_frames, m)
    steps = -(-m // b)
    curve = []
    bar = tqdm(total=cfg.epochs * steps, desc="k-means", unit="step", dynamic_ncols=True,
               disable=not progress)
    for epoch in range(cfg.epochs):
        order = rng.permutation(m)
        inertia = reseeded = 0.0
        for s in range(steps):
            idx = order[s * b:(s + 1) * b]
            x = np.zeros((b, d), np.float32)
            w = np.zeros(b, np.float32)
            x[:len(idx)], w[:len(idx)] = frames[idx], 1.0
            state, out = _step(state, jax.random.fold_in(key, epoch * steps + s), jnp.asarray(x),
                               jnp.asarray(w), cfg.reassign_ratio)
            inertia += float(out["inertia"]) * len(idx)
            reseeded += int(out["reassigned"])
            bar.update(1)
        curve.append({"epoch": epoch + 1, "inertia": inertia / m, "reseeded": int(reseeded)})
        log(f"k-means epoch {epoch + 1}/{cfg.epochs}: mean inertia {inertia / m:.4f} "
            f"(normalised units, {d} dims), {int(reseeded)} clusters reseeded")
    bar.close()
    final = float(np.sum(assign_frames(state, frames, b)[1], dtype=np.float64))
    return KMeansFit(state=state, curve=curve, inertia=final / m)


@dataclasses.dataclass(frozen=True)
class Clip:
    path: str
    seconds: float


def train_clips(corpus_dir: str, split: str = "train") -> list[Clip]:
    """The clips of `split` of a built corpus (its manifest), or every audio file of a plain
    folder (no manifest: all of it is material to fit on)."""
    from mufm.audio import io as audio_io
    from mufm.data.corpus.manifest import MANIFEST, read_manifest

    if os.path.exists(os.path.join(corpus_dir, MANIFEST)):
        clips = [Clip(os.path.join(corpus_dir, r["audio"]), r["num_samples"] / r["sample_rate"])
                 for r in read_manifest(corpus_dir) if r["split"] == split]
    elif os.path.isdir(corpus_dir):
        from mufm.data.audio_folder import find_audio_files

        clips = []
        for rel in find_audio_files(corpus_dir):
            path = os.path.join(corpus_dir, rel)
            try:
                clips.append(Clip(path, audio_io.info(path).duration_s))
            except audio_io.AudioReadError:
                continue  # unreadable files hold no frames
    else:
        raise FileNotFoundError(f"{corpus_dir}: no such directory")
    if not clips:
        raise ValueError(f"{corpus_dir}: no {split!r} clips")
    return clips


def read_crop(path: str, start_s: float, seconds: float, sample_rate: int = 24_000) -> np.ndarray:
    """[<= seconds * rate] mono float32 from `path` (silence is valid material)."""
    from mufm.audio.decode import DecodePolicy, load

    return load(path, start_s, seconds, policy=DecodePolicy(sample_rate=sample_rate,
                                                            silence_peak=-1.0))


def random_crops(clips: list[Clip], crop_samples: int, batch: int, seed: int,
                 sample_rate: int = 24_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches (waveform [batch, crop_samples], lengths [batch]) of random crops."""
    rng = np.random.default_rng(seed)
    seconds = np.array([c.seconds for c in clips])
    p = seconds / seconds.sum()
    crop_s = crop_samples / sample_rate
    while True:
        wave = np.zeros((batch, crop_samples), np.float32)
        lengths = np.zeros(batch, np.int32)
        for r in range(batch):
            clip = clips[rng.choice(len(clips), p=p)]
            start = rng.uniform(0.0, max(0.0, clip.seconds - crop_s))
            piece = read_crop(clip.path, start, crop_s, sample_rate)[:crop_samples]
            wave[r, :len(piece)], lengths[r] = piece, len(piece)
        yield wave, lengths


def collect_embeddings(model, clips: list[Clip], layer: int, cfg: FitConfig, *,
                       progress: bool = True) -> np.ndarray:
    """[<= max_frames, d_model] embeddings of random train crops, valid frames only."""
    from tqdm.auto import tqdm

    mcfg = model.configs["model"]
    crop = (model.configs["data"].sequence_length if cfg.crop_seconds is None
            else int(round(cfg.crop_seconds * mcfg.sample_rate)))
    crop = max(mcfg.hop, crop // mcfg.hop * mcfg.hop)
    buffer = np.zeros((cfg.max_frames, mcfg.d_model), np.float32)
    filled = 0
    bar = tqdm(total=cfg.max_frames, desc="embed", unit="frame", dynamic_ncols=True,
               disable=not progress)
    for wave, lengths in random_crops(clips, crop, cfg.batch_crops, cfg.seed, mcfg.sample_rate):
        x = np.asarray(embed(*model.parts, jnp.asarray(wave), jnp.asarray(lengths), layer))
        for r in range(len(wave)):
            valid = x[r, :lengths[r] // mcfg.hop][:cfg.max_frames - filled]
            buffer[filled:filled + len(valid)] = valid
            filled += len(valid)
        bar.update(min(filled, cfg.max_frames) - bar.n)
        if filled >= cfg.max_frames:
            break
    bar.close()
    return buffer[:filled]


def fit_tokens(model_dir: str, corpus_dir: str, cfg: FitConfig = FitConfig(), *,
               tokens_dir: str | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> tuple[KMeansFit, str]:
    """Fits the k-means of a semantic run (module docstring) and saves it; returns the fit
    and the directory written."""
    from mufm.train.restore import load

    t0 = time.perf_counter()
    model = load(model_dir, family="semantic")
    mcfg = model.configs["model"]
    layer = default_layer(mcfg) if cfg.layer is None else cfg.layer
    if not 0 <= layer <= mcfg.num_layers:
        raise ValueError(f"--layer={layer} outside [0, {mcfg.num_layers}] (0: feature encoder, "
                         f"1..{mcfg.contrastive_layers}: contrastive blocks, then MLM blocks)")
    clips = train_clips(corpus_dir)
    log(f"semantic run {model.model_dir} step {model.step}: layer {layer} of "
        f"{mcfg.num_layers} (d_model {mcfg.d_model}), K = {cfg.num_clusters}, up to "
        f"{cfg.max_frames} frames from {len(clips)} train clips "
        f"({sum(c.seconds for c in clips) / 3600:.2f} h)")
    frames = collect_embeddings(model, clips, layer, cfg, progress=progress)
    t_embed = time.perf_counter() - t0
    fit = fit_frames(frames, cfg, progress=progress, log=log)
    out = tokens_dir or os.path.join(model.model_dir, TOKENS_DIR)
    counts = np.asarray(fit.state.counts)
    meta = {"layer": layer, "num_clusters": cfg.num_clusters, "step": model.step,
            "model_dir": model.model_dir, "d_model": mcfg.d_model, "frames": int(len(frames)),
            "seconds_of_audio": len(frames) / mcfg.frame_rate, "corpus_dir": os.path.abspath(corpus_dir),
            "inertia": fit.inertia, "inertia_curve": fit.curve,
            "fit": dataclasses.asdict(cfg), "embed_seconds": round(t_embed, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            "empty_clusters": int(np.sum(counts <= 0))}
    save_centroids(out, fit.state, meta)
    log(f"final inertia {fit.inertia:.4f} over {len(frames)} frames "
        f"({len(frames) / mcfg.frame_rate / 60:.1f} min of audio); saved {out}")
    return fit, out
