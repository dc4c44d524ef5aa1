"""Text to audio from trained runs: `python -m mufm.generate --gin_file=configs/generate/
main.gin --text ... --seconds 30 --out out.wav` (__main__.py), or in Python

    cascade = mufm.generate.load(mulan, semantic, coarse, fine, codec)
    audio = cascade.generate(["a calm piano piece"], seconds=30)       # [1, 720_000]
    story = cascade.generate_story([("soft piano", 10), ("drums join", 10)])
    more = cascade.generate_continuation("prompt.wav", seconds=20)     # prompt + 20 s
    for piece in cascade.stream(cascade.text_request(["..."], 600)):   # as it is made
        ...

(`mufm.sample.cascade.Cascade`; `from_gin("configs/generate/main.gin")` builds one from
a `GenerateConfig`)."""
from __future__ import annotations


def load(mulan: str, semantic: str, coarse: str, fine: str, codec: str, **kwargs):
    """The five runs as a checked, loaded `Cascade` (keywords: semantic_tokenizer,
    semantic_tokens, overlap, max_seconds, configs)."""
    from mufm.sample.cascade import Cascade

    return Cascade.load(mulan, semantic, coarse, fine, codec, **kwargs)


def from_gin(*gin_files: str, bindings=()):
    """The cascade a configs/generate/*.gin (and bindings) names."""
    from mufm import gin_flags
    from mufm.generate.config import GenerateConfig

    gin_flags.parse(list(gin_files), list(bindings), finalize=False)
    return GenerateConfig().load()
