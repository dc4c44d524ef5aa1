"""Shared tiny codec: building one costs seconds of XLA compiles per parameter shape on a
busy 2-core machine, so the codec tests build it once per session and merge copies."""
import pytest
from flax import nnx

from mufm.codec.model import CodecConfig, build_codec, split_codec

TINY_CODEC = CodecConfig(channels=4, embedding_dim=16, num_levels=4, codebook_size=32)


@pytest.fixture(scope="session")
def tiny_codec_parts():
    return split_codec(build_codec(TINY_CODEC))


@pytest.fixture
def tiny_codec(tiny_codec_parts):
    """A fresh module (its own Variables) over the shared initial weights."""
    return nnx.merge(*tiny_codec_parts)
