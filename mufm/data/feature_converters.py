"""Decoder-only feature converter with optional per-token side features.

Stage layouts need two things seqio's LMFeatureConverter lacks: per-token loss weights (0 on
conditioning prefixes) and per-token stream ids (which RVQ level / token stream a position
holds, for per-stream metrics). Tasks provide them as `targets_weights` and
`targets_streams`, aligned with `targets`; packing carries them along.

Side features are stored ONE-BASED (value + 1): seqio's packing counts a feature's length by
its non-zero entries, so a zero weight or stream id 0 would be squeezed out and shift the
feature against `targets`. `side_feature()` encodes, the converter decodes.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import seqio
import tensorflow as tf

SIDE_FEATURES = ("targets_weights", "targets_streams")


def side_feature(values: tf.Tensor) -> tf.Tensor:
    """Encodes per-token weights / stream ids for a task's output (see module doc)."""
    return tf.cast(values, tf.int32) + 1


def _decode_side(values: tf.Tensor) -> tf.Tensor:
    return tf.maximum(values - 1, 0)  # padding (0) decodes to 0


class StageLMFeatureConverter(seqio.LMFeatureConverter):
    def __init__(self, side_features: Sequence[str] = (), pack: bool = True, **kwargs):
        unknown = set(side_features) - set(SIDE_FEATURES)
        if unknown:
            raise ValueError(f"unknown side features {sorted(unknown)}; known: {SIDE_FEATURES}")
        super().__init__(pack=pack, **kwargs)
        self.side_features = tuple(side_features)
        spec = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
        self.TASK_FEATURES = {"targets": spec, **{f: spec for f in self.side_features}}
        self.MODEL_FEATURES = dict(seqio.LMFeatureConverter.MODEL_FEATURES)
        if "targets_streams" in self.side_features:
            self.MODEL_FEATURES["decoder_stream_ids"] = spec

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        d = dict(super()._convert_example(features))
        if "targets_weights" in self.side_features:
            d["decoder_loss_weights"] = d["decoder_loss_weights"] * _decode_side(features["targets_weights"])
        if "targets_streams" in self.side_features:
            d["decoder_stream_ids"] = _decode_side(features["targets_streams"])
        return d

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        if "targets_streams" in self.side_features:
            lengths["decoder_stream_ids"] = task_feature_lengths["targets"]
        return lengths

    def task_feature_lengths(self, sequence_length: int) -> dict[str, int]:
        return {f: sequence_length for f in self.TASK_FEATURES}
