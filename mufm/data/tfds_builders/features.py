"""Feature specs shared by the TFDS builders: int16 24 kHz waveform, caption, attributes."""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mufm.audio import SAMPLE_RATE

# The corpus attribute fields a generated example can be checked against (README: "caption fields").
CORPUS_TEXT_ATTRIBUTES = ("key", "key_tonic", "mode", "tempo_word", "time_signature", "instruments",
                          "palette", "composer", "collection", "region", "era", "texture", "title")
CORPUS_NUMBER_ATTRIBUTES = {"bpm": np.int32, "n_parts": np.int32, "duration_s": np.float32,
                            "tempo_scale": np.float32, "transpose": np.int32}


def waveform_feature() -> tfds.features.Audio:
    return tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def corpus_attributes_feature() -> tfds.features.FeaturesDict:
    spec = {k: tfds.features.Text() for k in CORPUS_TEXT_ATTRIBUTES}
    spec.update({k: tfds.features.Scalar(dtype=v) for k, v in CORPUS_NUMBER_ATTRIBUTES.items()})
    return tfds.features.FeaturesDict(spec)


def clip_features(**extra: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
    """The features every clip builder shares (so their tasks mix), plus builder-specific ones."""
    return tfds.features.FeaturesDict({
        "waveform": waveform_feature(),
        "sample_rate": tfds.features.Scalar(dtype=np.int32),
        "caption": tfds.features.Text(),
        "clip_id": tfds.features.Text(),
        # typed attributes a generated clip can be checked against (key, bpm, ...)
        "attributes": corpus_attributes_feature(),
        # every attribute / captions-file column, as JSON text
        "attributes_json": tfds.features.Text(),
        **extra,
    })


def corpus_attributes_example(attrs: dict) -> dict:
    """Typed attribute fields from a dict; absent ones are "" / 0 (e.g. a user's folder)."""
    out = {}
    for k in CORPUS_TEXT_ATTRIBUTES:
        v = attrs.get(k, "")
        out[k] = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    for k, dt in CORPUS_NUMBER_ATTRIBUTES.items():
        try:
            out[k] = dt(float(attrs.get(k, 0) or 0))
        except (TypeError, ValueError):
            out[k] = dt(0)
    return out
