"""A synthetic audio task for codec tests and smoke runs: no corpus, no fluidsynth.

``mufm_synthetic_audio``: 2-second 24 kHz clips of four successive notes, each a harmonic
tone (fundamental 80-1000 Hz, four harmonics with random decaying amplitudes) under an
attack/decay envelope, plus a little noise; the same output features and crops as the corpus
tasks (`mufm.data.tasks`), so the codec trainer cannot tell them apart. Generation is
stateless-random from (split, seed, example index): deterministic, index-addressable and
sharded per host. ``train`` is endless; ``validation`` and ``test`` hold 64 clips each.
"""
from __future__ import annotations

import math

import seqio
import tensorflow as tf

from mufm.audio import SAMPLE_RATE
from mufm.data import tasks

TASK_NAME = "mufm_synthetic_audio"
CLIP_SECONDS = 2.0
NOTES = 4
HARMONICS = 4
# (seed offset, examples). `validation_odd` has an odd number of clips, so its input shards
# hold different numbers of eval batches (2 shards of batch 2: 3 and 2): the multi-host
# evaluation over uneven shards is rehearsed on it (tests/train/test_multiprocess.py).
_SPLITS = {"train": (0, 1 << 40), "validation": (1, 64), "test": (2, 64),
           "validation_odd": (3, 9)}


def _example(index: tf.Tensor, split_seed: tf.Tensor, split: str) -> dict[str, tf.Tensor]:
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    per_note = n // NOTES
    key = tf.stack([split_seed, index])
    draw = lambda i, shape, lo, hi: tf.random.stateless_uniform(
        shape, tf.random.experimental.stateless_fold_in(key, i), lo, hi)
    f0 = tf.exp(draw(0, [NOTES, 1], math.log(80.0), math.log(1000.0)))
    amps = draw(1, [NOTES, HARMONICS], 0.0, 1.0) / tf.range(1.0, HARMONICS + 1.0)
    phase = draw(2, [NOTES, HARMONICS], 0.0, 2 * math.pi)
    decay = draw(3, [NOTES, 1], 2.0, 8.0)
    gain = draw(4, [NOTES, 1], 0.1, 0.5)
    t = tf.range(per_note, dtype=tf.float32)[None, :] / SAMPLE_RATE  # [1, T]
    harmonics = tf.range(1.0, HARMONICS + 1.0)[None, :, None]  # [1, H, 1]
    tones = tf.sin(2 * math.pi * f0[:, :, None] * harmonics * t[:, None, :] + phase[:, :, None])
    tones = tf.reduce_sum(amps[:, :, None] * tones, axis=1)  # [NOTES, T]
    envelope = tf.minimum(t / 0.01, 1.0) * tf.exp(-decay * t)
    wave = tf.reshape(gain * envelope * tones, [-1])
    wave = wave + 0.003 * tf.random.stateless_normal(
        tf.shape(wave), tf.random.experimental.stateless_fold_in(key, 5))
    wave = tf.pad(wave, [[0, n - NOTES * per_note]])
    empty = tf.constant("")
    return {"waveform": tf.clip_by_value(wave, -1.0, 1.0), "waveform_length": tf.constant(n),
            "bpm": tf.constant(0), "caption": tf.constant("synthetic harmonic notes"),
            "clip_id": tf.strings.as_string(index), "key": empty, "mode": empty,
            "time_signature": empty, "instruments": empty, "composer": empty,
            "attributes_json": tf.constant("{}"), tasks._SPLIT_KEY: tf.constant(split)}


def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None,
               shard_info: seqio.ShardInfo | None = None) -> tf.data.Dataset:
    del shuffle_files  # examples are i.i.d. by construction
    if split not in _SPLITS:
        raise ValueError(f"{TASK_NAME}: unknown split {split!r}; known {sorted(_SPLITS)}")
    offset, size = _SPLITS[split]
    # Held-out splits are fixed sets whatever the training seed.
    split_seed = tf.constant(offset + (1000 * (seed or 0) if split == "train" else 0), tf.int64)
    ds = tf.data.Dataset.range(size)
    if shard_info is not None:
        ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.map(lambda i: _example(i, split_seed, split), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)


def register() -> seqio.Task:
    if TASK_NAME in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(TASK_NAME)
    return seqio.TaskRegistry.add(
        TASK_NAME,
        source=seqio.FunctionDataSource(dataset_fn, splits=tuple(_SPLITS)),
        output_features=tasks.audio_output_features(),
        preprocessors=[tasks._partial(tasks.crop_waveform, crop_seconds=1.0, pad_short=True)],
        shuffle_buffer_size=64)


register()
