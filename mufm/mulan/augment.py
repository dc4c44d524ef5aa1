"""Host-side caption augmentation and tokenisation for MuLan training batches.

A corpus caption states a handful of facts (key, tempo, instruments, meter, texture,
origin; mufm/data/corpus/captions.py) in one of five templates. Seen always whole, the
text tower could match a clip by a template's wording; MuLan's users will write short,
partial prompts ("a piece in D minor"). So each training example either keeps its caption
(probability `keep_caption`) or gets a caption rebuilt from its structured attributes:
every fact dropped with probability `drop_fact` (at least one kept) and, with `shuffle`,
the kept facts in random order ("played by a piano, in D minor, at 92 bpm").

Determinism: the draws of an example come from numpy's generator seeded by (seed, step,
example row of the global batch), so a resumed run augments exactly as the uninterrupted
one (the trainer's bitwise-resume test covers it) and the augmentation does not depend on
how many hosts share the batch. A source without attributes ("{}", a user's folder) always
keeps its caption.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import gin
import numpy as np

from mufm.data.corpus.captions import instrument_phrase

SALT = 0x6d756c61  # "mula": keeps these draws apart from other users of (seed, step)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CaptionAugmentConfig:
    keep_caption: float = 0.5  # probability an example keeps its corpus caption as is
    drop_fact: float = 0.3  # otherwise: each fact of the attributes dropped with this probability
    shuffle: bool = True  # ... and the kept facts shuffled
    enabled: bool = True  # False: every example keeps its caption (evaluation, ablations)

    def __post_init__(self):
        if not 0.0 <= self.keep_caption <= 1.0 or not 0.0 <= self.drop_fact < 1.0:
            raise ValueError(f"CaptionAugmentConfig: keep_caption={self.keep_caption} must lie "
                             f"in [0, 1] and drop_fact={self.drop_fact} in [0, 1)")


def facts(attrs: dict) -> list[str]:
    """The caption phrases the corpus attributes support, in the templates' order."""
    out = []
    if attrs.get("texture"):
        out.append(("a " + attrs["tempo_adjective"] + " " if attrs.get("tempo_adjective") else "a ")
                   + attrs["texture"])
    if attrs.get("key"):
        out.append(f"in {attrs['key']}")
    if attrs.get("instruments"):
        full = {"n_parts": 1, "palette": "", **attrs}
        out.append(f"played by {instrument_phrase(full)}")
    if attrs.get("bpm"):
        word = f" ({attrs['tempo_word']})" if attrs.get("tempo_word") else ""
        out.append(f"at {int(attrs['bpm'])} bpm{word}")
    if attrs.get("time_signature"):
        out.append(f"in {attrs['time_signature']} time")
    if attrs.get("composer"):
        out.append(f"composed by {attrs['composer']}")
    elif attrs.get("region"):
        out.append(f"a tune from {attrs['region']}")
    return out


def augment_caption(caption: str, attrs: dict, cfg: CaptionAugmentConfig,
                    rng: np.random.Generator) -> str:
    phrases = facts(attrs)
    if not cfg.enabled or not phrases or rng.random() < cfg.keep_caption:
        return caption
    keep = rng.random(len(phrases)) >= cfg.drop_fact
    if not keep.any():
        keep[rng.integers(len(phrases))] = True
    kept = [p for p, k in zip(phrases, keep) if k]
    if cfg.shuffle:
        kept = [kept[i] for i in rng.permutation(len(kept))]
    text = ", ".join(kept)
    return text[0].upper() + text[1:] + "."


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def augment_batch(captions: Sequence, attributes_json: Sequence, cfg: CaptionAugmentConfig, *,
                  seed: int, step: int, first_row: int = 0) -> list[str]:
    """The training captions of one host batch; row i of it is row first_row + i of the
    global batch `step`."""
    out = []
    for i, (cap, attrs) in enumerate(zip(captions, attributes_json)):
        rng = np.random.default_rng([SALT, seed, step, first_row + i])
        out.append(augment_caption(_text(cap), json.loads(_text(attrs) or "{}"), cfg, rng))
    return out
