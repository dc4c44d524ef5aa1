"""Text to audio from trained runs: `python -m mufm.generate --text ... --out out.wav`
(__main__.py), or in Python `mufm.generate.load(mulan, semantic, coarse, fine, codec)`,
the `mufm.sample.cascade.Cascade` whose `generate(texts, seconds)` gives 24 kHz audio."""
from __future__ import annotations


def load(mulan: str, semantic: str, coarse: str, fine: str, codec: str, **kwargs):
    """The five runs as a checked, loaded `Cascade` (keywords: overlap, max_seconds)."""
    from mufm.sample.cascade import Cascade

    return Cascade.load(mulan, semantic, coarse, fine, codec, **kwargs)
