"""The pre-tokenised clip record: one `tf.train.Example` per clip, written by the Beam job
(`mufm.data.pretokenize`) and read by the stage token tasks (`mufm.data.token_tasks`).

    clip_id, split, caption, attributes_json   bytes
    mulan        int64 [mulan_levels]           MuLan audio tokens of the whole clip
    semantic     int64 [t25]                    semantic tokens, 25 Hz (t25 = samples // 960)
    acoustic     int64 [t50 * levels]           codec codes, 50 Hz, frame-major (t50 = ceil(samples / 480))
    acoustic_levels, num_samples  int64 scalars

Semantic frame k covers acoustic frames 2k and 2k + 1, so crops at a common time stay
aligned. Codes are small non-negative ints: TFRecord's varints store them in two bytes.
Nothing here imports TensorFlow at module level (the writer side runs in Beam workers
that may not need it until they serialise).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

SEMANTIC_HZ, ACOUSTIC_HZ = 25, 50
SHARD_SUFFIX = ".tfrecord"
STRING_FEATURES = ("clip_id", "split", "caption", "attributes_json")
INT_SCALARS = ("acoustic_levels", "num_samples")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def shard_pattern(split: str) -> str:
    return f"{split}-*-of-*{SHARD_SUFFIX}"


def serialize(record: Mapping[str, Any]) -> bytes:
    """A clip's tokens and metadata -> serialized tf.train.Example."""
    import tensorflow as tf

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).ravel()))

    def text(value: str):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

    acoustic = np.asarray(record["acoustic"])
    feats = {k: text(record[k]) for k in STRING_FEATURES}
    feats.update(mulan=ints(record["mulan"]), semantic=ints(record["semantic"]),
                 acoustic=ints(acoustic), acoustic_levels=ints([acoustic.shape[1]]),
                 num_samples=ints([record["num_samples"]]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def feature_description() -> dict:
    """The tf.io parsing spec of a record (variable-length int lists as dense after parsing)."""
    import tensorflow as tf

    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in STRING_FEATURES}
    spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in INT_SCALARS})
    spec.update({k: tf.io.VarLenFeature(tf.int64) for k in ("mulan", "semantic", "acoustic")})
    return spec


def parse(serialized) -> dict:
    """A serialized record -> {mulan [q], semantic [t25], acoustic [t50, levels], ...} tensors."""
    import tensorflow as tf

    ex = tf.io.parse_single_example(serialized, feature_description())
    out = {k: ex[k] for k in STRING_FEATURES + INT_SCALARS}
    for k in ("mulan", "semantic", "acoustic"):
        out[k] = tf.sparse.to_dense(ex[k])
    out["acoustic"] = tf.reshape(out["acoustic"], [-1, tf.cast(ex["acoustic_levels"], tf.int32)])
    return out


def read_records(path: str) -> list[dict]:
    """Every record of one shard as numpy dicts (tests, statistics, the evaluation)."""
    import tensorflow as tf

    out = []
    for raw in tf.data.TFRecordDataset(path):
        ex = {k: v.numpy() for k, v in parse(raw).items()}
        for k in STRING_FEATURES:
            ex[k] = ex[k].decode("utf-8")
        out.append(ex)
    return out
