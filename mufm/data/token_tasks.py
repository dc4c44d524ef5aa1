"""seqio Tasks of the stage LMs over the pre-tokenised clips (`mufm.data.pretokenize`).

    mufm_tokens_semantic   [mulan 12] semantic            (paper: 30 s crops)
    mufm_tokens_coarse     [mulan 12][semantic] coarse    (10 s)
    mufm_tokens_fine       [coarse] fine                  (3 s)

A task is registered by a `TokenTaskRegistration` in `DataConfig.registrations` (gin:
`@TokenTaskRegistration()`, with `layout = @semantic_stage()` etc.), so the name, the
tokens directory, the layout (`mufm.lm.layouts`, whose segment lengths are the crops) and
the conditioning options are all gin, and a trained run's stored config rebuilds the same
task. `register_stage_mixture` mixes tasks of one layout (e.g. two corpora).

Per example (in this order):
1. `crop_streams`: one start time per clip, in semantic frames (40 ms: acoustic frame
   2k is semantic frame k's first half); each stream is cut to the longest segment that
   reads it. Train crops start at a uniformly random frame (seqio's stateless per-example
   seeds), every other split at the centre. A clip shorter than the crop gives a shorter
   target (the layout pads conditioning with EMPTY).
2. `shuffle_conditioning` (a baseline, off by default): each clip's MuLan tokens are
   replaced by those of the clip `SHUFFLE_LAG` places earlier in the (file-shuffled) stream,
   the first `SHUFFLE_LAG` by MISSING (EMPTY tokens). A model trained so cannot use the
   conditioning; comparing it with the real one measures what the conditioning is worth.
3. `encode_layout`: the layout's ids, loss weights and stream ids, with the droppable
   segments (MuLan) replaced by NULL with probability `conditioning_dropout` on `train`
   (classifier-free guidance), never elsewhere.

Outputs `targets` (ids), `targets_weights`, `targets_streams` (`side_feature`-encoded, see
`mufm.data.feature_converters`), which `StageLMFeatureConverter` packs into decoder
features with per-token loss weights and stream ids.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

from mufm.data import token_records as R
from mufm.data.feature_converters import side_feature
from mufm.lm import layouts as L

SHUFFLE_LAG = 64  # > clips per shard: the borrowed tokens come from another file
STAGE_TASKS = ("mufm_tokens_semantic", "mufm_tokens_coarse", "mufm_tokens_fine")
_HZ = {"semantic": R.SEMANTIC_HZ, "acoustic": R.ACOUSTIC_HZ}


def _feature(vocab_size: int | None = None):
    vocab = seqio.PassThroughVocabulary(vocab_size or 1)
    return seqio.Feature(vocab, add_eos=False, required=vocab_size is not None, dtype=tf.int32)


def output_features(layout: L.StageLayout) -> dict:
    return {"targets": _feature(layout.vocab_size), "targets_weights": _feature(),
            "targets_streams": _feature()}


def stream_frames(layout: L.StageLayout) -> dict[str, int]:
    """Frames of each framed stream a layout reads (its crop, per stream)."""
    out: dict[str, int] = {}
    for seg in layout.segments:
        if seg.stream == "mulan":
            continue
        if seg.stream in out and out[seg.stream] != seg.frames:
            raise ValueError(f"stage {layout.name!r}: segments of the {seg.stream!r} stream have "
                             f"{out[seg.stream]} and {seg.frames} frames; segments of one stream must "
                             f"cover the same crop")
        out[seg.stream] = seg.frames
    return out


def check_layout(layout: L.StageLayout, manifest: dict, tokens_dir: str) -> None:
    """The layout's codebooks and levels against what the tokens hold (clear errors)."""
    streams = manifest["streams"]
    for seg in layout.segments:
        s = streams[seg.stream]
        if seg.codebook_size != s["codebook_size"]:
            raise ValueError(f"stage {layout.name!r}, segment {seg.name!r}: codebook_size="
                             f"{seg.codebook_size}, but the {seg.stream} tokens in {tokens_dir} have "
                             f"{s['codebook_size']} codes (set it in the stage's gin)")
        if seg.stream != "semantic" and seg.levels[-1] >= s["levels"]:
            raise ValueError(f"stage {layout.name!r}, segment {seg.name!r}: needs {seg.stream} level "
                             f"{seg.levels[-1]}, the tokens in {tokens_dir} have {s['levels']} levels")


def crop_streams(ds: tf.data.Dataset, layout: L.StageLayout) -> tf.data.Dataset:
    frames = stream_frames(layout)
    # The crop in semantic frames (40 ms steps): the longest stream's duration.
    span = max([int(np.ceil(f * R.SEMANTIC_HZ / _HZ[s])) for s, f in frames.items()] or [0])

    @seqio.map_over_dataset(num_seeds=1)
    def crop(ex, seed):
        t = tf.cast(tf.shape(ex["semantic"])[0], tf.int32)
        max_start = tf.maximum(t - span, 0)
        random = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=max_start + 1,
                                             dtype=tf.int32)
        start = tf.where(tf.equal(ex["split"], "train"), random, max_start // 2)
        out = dict(ex)
        for stream, n in frames.items():
            first = start * (_HZ[stream] // R.SEMANTIC_HZ)
            out[stream] = ex[stream][first:first + n]
        out["crop_start_s"] = tf.cast(start, tf.float32) / R.SEMANTIC_HZ
        return out

    return crop(ds)


def shuffle_conditioning(ds: tf.data.Dataset, levels: int) -> tf.data.Dataset:
    def step(state, ex):
        ring, i = state
        slot = tf.math.floormod(i, SHUFFLE_LAG)
        borrowed = ring[slot]
        ring = tf.tensor_scatter_nd_update(ring, [[slot]], [ex["mulan"]])
        return (ring, i + 1), {**ex, "mulan": borrowed}

    init = (tf.fill([SHUFFLE_LAG, levels], tf.constant(L.MISSING, tf.int64)), tf.constant(0, tf.int64))
    return ds.scan(init, step)


def _segment_tf(layout: L.StageLayout, k: int, ex: dict, drop) -> tuple:
    """Segment k's (ids, stream ids, weights), BOS first: `StageLayout._segment_tokens` in
    TensorFlow ops (a test checks the two agree), so the input pipeline never holds the GIL."""
    seg = layout.segments[k]
    is_target = k == len(layout.segments) - 1
    a = tf.cast(ex[seg.stream], tf.int32)
    if seg.stream == "semantic":
        cells = a[:, None]
    elif seg.stream == "mulan":
        cells = a[None, seg.first_level:seg.first_level + seg.num_levels]
    else:
        cells = a[:, seg.first_level:seg.first_level + seg.num_levels]
    n = seg.num_levels
    present = tf.shape(cells)[0]
    if not is_target:  # conditioning: exactly seg.frames frames, MISSING past the clip's end
        cells = tf.pad(cells[:seg.frames], [[0, tf.maximum(seg.frames - present, 0)], [0, 0]],
                       constant_values=L.MISSING)
        cells = tf.ensure_shape(cells, [seg.frames, n])
    frames = tf.shape(cells)[0]
    if seg.pattern == "delay":
        steps = frames + n - 1
        frame = tf.range(steps)[:, None] - tf.range(n)[None, :]
        inside = (frame >= 0) & (frame < frames)
        level = tf.broadcast_to(tf.range(n)[None, :], tf.shape(frame))
        # One MISSING row appended so the gather never reads an empty array (no frames);
        # then no frames means no steps at all, as in the numpy layout.
        padded = tf.concat([cells, tf.fill([1, n], L.MISSING)], 0)
        where = tf.stack([tf.where(inside, frame, frames), level], -1)
        codes = tf.gather_nd(padded, where)[:tf.where(frames > 0, steps, 0)]
    else:
        codes = cells
    level = tf.reshape(tf.broadcast_to(tf.range(n)[None, :], tf.shape(codes)), [-1])
    codes = tf.reshape(codes, [-1])
    offsets = tf.constant(layout._offsets(k), tf.int32)
    ids = tf.where(codes >= 0, codes + tf.gather(offsets, level), L.EMPTY)
    if seg.droppable:
        ids = tf.where(drop, tf.fill(tf.shape(ids), L.NULL), ids)
    weighted = is_target or layout.loss_on_conditioning
    weights = tf.cast((ids >= layout.num_special) & weighted, tf.int32)
    streams = tf.gather(tf.constant(layout._stream_ids(k), tf.int32), level)
    bos = tf.constant([L.FIRST_BOS + k], tf.int32)
    zero = tf.zeros([1], tf.int32)
    return tf.concat([bos, ids], 0), tf.concat([zero, streams], 0), tf.concat([zero, weights], 0)


def encode_example_tf(layout: L.StageLayout, ex: dict, drop=False) -> dict:
    """One cropped example -> {ids, stream ids, loss weights} [n] int32 (`StageLayout.encode`'s
    decoder_target_tokens, decoder_stream_ids and decoder_loss_weights, unpadded)."""
    drop = tf.convert_to_tensor(drop)
    parts = [_segment_tf(layout, k, ex, drop) for k in range(len(layout.segments))]
    ids, streams, weights = (tf.concat(p, 0) for p in zip(*parts))
    return {"ids": ids, "streams": streams, "weights": weights}


def encode_layout(ds: tf.data.Dataset, layout: L.StageLayout, conditioning_dropout: float
                  ) -> tf.data.Dataset:
    droppable = any(s.droppable for s in layout.segments)

    @seqio.map_over_dataset(num_seeds=1)
    def encode(ex, seed):
        coin = tf.random.stateless_uniform([], seed=seed) < conditioning_dropout
        drop = tf.logical_and(coin, tf.equal(ex["split"], "train")) & droppable
        row = encode_example_tf(layout, ex, drop)
        return {"targets": row["ids"], "targets_weights": side_feature(row["weights"]),
                "targets_streams": side_feature(row["streams"])}

    return encode(ds)


def _partial(fn, **kwargs):
    def wrapped(ds):
        return fn(ds, **kwargs)
    wrapped.__name__ = fn.__name__
    return wrapped


def register_token_task(name: str, tokens_dir: str, layout: L.StageLayout, *,
                        conditioning_dropout: float = 0.0, shuffle_mulan: bool = False,
                        shuffle_buffer_size: int = 1024) -> seqio.Task:
    """(Re-)registers one stage task over `tokens_dir` (module docstring)."""
    from mufm.data.pretokenize import read_manifest

    if not 0.0 <= conditioning_dropout <= 1.0:
        raise ValueError(f"conditioning_dropout={conditioning_dropout}: must lie in [0, 1]")
    if conditioning_dropout and not any(s.droppable for s in layout.segments):
        raise ValueError(f"stage {layout.name!r} has no droppable segment for "
                         f"conditioning_dropout={conditioning_dropout}")
    # The manifest checks the layout against the tokens when it is there; a run's stored
    # config is also rebuilt where the tokens are not (loading a trained stage for
    # sampling), so registering never requires it (training checks it: `check`).
    try:
        manifest = read_manifest(tokens_dir)
    except FileNotFoundError:
        manifest = None
    stream_frames(layout)
    if manifest is not None:
        check_layout(layout, manifest, tokens_dir)
        splits = {split: info["clips"] for split, info in manifest["splits"].items()}
        mulan_levels = int(manifest["streams"]["mulan"]["levels"])
    else:
        splits = dict.fromkeys(("train", "validation", "test"))
        mulan_levels = next((s.num_levels for s in layout.segments if s.stream == "mulan"), 0)
    source = seqio.FileDataSource(
        read_file_fn=lambda files: tf.data.TFRecordDataset(files).map(
            R.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True),
        split_to_filepattern={split: os.path.join(tokens_dir, R.shard_pattern(split)) for split in splits},
        num_input_examples=splits if manifest is not None else None)
    preprocessors = [_partial(crop_streams, layout=layout)]
    if shuffle_mulan:
        preprocessors.append(_partial(shuffle_conditioning, levels=mulan_levels))
    preprocessors.append(_partial(encode_layout, layout=layout,
                                  conditioning_dropout=conditioning_dropout))
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, source=source, output_features=output_features(layout),
                                  preprocessors=preprocessors, shuffle_buffer_size=shuffle_buffer_size)


def register_stage_mixture(name: str, tasks, default_rate=None) -> seqio.Mixture:
    """A Mixture of token tasks of one layout (`tasks`: names or (name, rate) pairs)."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TokenTaskRegistration:
    """Registers a stage token task when its DataConfig is built (`DataConfig.registrations`);
    a plain dataclass, so a run's stored config rebuilds it. Its `layout` also gives the
    DataConfig its stream names and the LMTask its vocabulary and length checks."""
    name: str = "mufm_tokens_semantic"
    tokens_dir: str | None = None
    layout: Any = None  # a mufm.lm.layouts.StageLayout (gin: @semantic_stage() ...)
    conditioning_dropout: float = 0.0
    shuffle_mulan: bool = False
    shuffle_buffer_size: int = 1024

    def __post_init__(self):
        if isinstance(self.layout, dict):  # rebuilt from JSON without its class tag
            object.__setattr__(self, "layout", L.StageLayout(**self.layout))
        if self.layout is None:
            raise ValueError("TokenTaskRegistration.layout is required, e.g. "
                             "TokenTaskRegistration.layout = @semantic_stage()")

    @property
    def stream_names(self) -> tuple[str, ...]:
        return self.layout.stream_names

    def check(self) -> None:
        """Before training: the tokens exist and fit the layout (clear errors)."""
        from mufm.data.pretokenize import read_manifest

        self._require_dir()
        check_layout(self.layout, read_manifest(self.tokens_dir), self.tokens_dir)

    def _require_dir(self) -> None:
        if not self.tokens_dir:
            raise ValueError("TokenTaskRegistration.tokens_dir is required: the output of "
                             "`python -m mufm.data.pretokenize` (gin: TOKENS_DIR)")

    def register(self) -> None:
        self._require_dir()
        register_token_task(self.name, self.tokens_dir, self.layout,
                            conditioning_dropout=self.conditioning_dropout,
                            shuffle_mulan=self.shuffle_mulan,
                            shuffle_buffer_size=self.shuffle_buffer_size)
