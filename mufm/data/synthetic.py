"""A synthetic, learnable token task that exercises the whole seqio path with no data.

Each example is `[period token p] + motif(p random tokens) repeated` up to a random length.
The first p+1 tokens are unpredictable; everything after is a copy from p positions back,
so a model that learns to read the period and attend p steps back drives the loss on the
"copy" stream to ~0 (an induction-head task). Stream ids: 0 = prompt, 1 = copy.
Generation is stateless-random from (seed, example index), so it is deterministic and
sharded per host by index.
"""
from __future__ import annotations

import functools

import seqio
import tensorflow as tf

from mufm.data.feature_converters import SIDE_FEATURES, side_feature

TASK_NAME = "mufm_synthetic_copy"
VOCAB_SIZE = 128
MIN_PERIOD, MAX_PERIOD = 2, 8
FIRST_MOTIF_TOKEN = 16  # 0 pad, 1 eos, 2..9 period markers
MIN_LEN, MAX_LEN = 24, 96
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
_NUM_EXAMPLES = 1 << 40  # effectively infinite, and index-addressable


def _example(index: tf.Tensor, seed: int) -> dict[str, tf.Tensor]:
    key = tf.stack([tf.cast(seed, tf.int64), index])
    k_period, k_len, k_motif = [tf.random.experimental.stateless_fold_in(key, i) for i in range(3)]
    period = tf.random.stateless_uniform([], k_period, MIN_PERIOD, MAX_PERIOD + 1, tf.int32)
    length = tf.random.stateless_uniform([], k_len, MIN_LEN, MAX_LEN + 1, tf.int32)
    motif = tf.random.stateless_uniform([MAX_PERIOD], k_motif, FIRST_MOTIF_TOKEN, VOCAB_SIZE, tf.int32)
    body = tf.gather(motif[:period], tf.range(length - 1) % period)
    targets = tf.concat([[period], body], axis=0)
    streams = tf.cast(tf.range(length) > period, tf.int32)
    return {"targets": targets, "targets_streams": side_feature(streams),
            "targets_weights": side_feature(tf.ones([length], tf.int32))}


def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None,
               shard_info: seqio.ShardInfo | None = None) -> tf.data.Dataset:
    del shuffle_files  # examples are already i.i.d. by construction
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"{TASK_NAME}: unknown split {split!r}; known {sorted(_SPLIT_SEEDS)}")
    base = _SPLIT_SEEDS[split] + 1000 * (seed or 0)
    ds = tf.data.Dataset.range(_NUM_EXAMPLES)
    if shard_info is not None:
        ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.map(functools.partial(_example, seed=base), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)


def register() -> None:
    if TASK_NAME in seqio.TaskRegistry.names():
        return
    vocab = seqio.PassThroughVocabulary(size=VOCAB_SIZE, eos_id=1)
    side = seqio.PassThroughVocabulary(size=3)  # one-based side features
    seqio.TaskRegistry.add(
        TASK_NAME,
        source=seqio.FunctionDataSource(dataset_fn, splits=tuple(_SPLIT_SEEDS)),
        preprocessors=[],
        output_features={
            "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
            **{f: seqio.Feature(side, add_eos=False, dtype=tf.int32, required=False)
               for f in SIDE_FEATURES},
        },
    )


register()
