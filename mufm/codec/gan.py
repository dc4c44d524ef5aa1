"""The codec GAN as one module: the codec (generator) and its discriminators side by side.

Holding both in one nnx.Module lets the core trainer treat the GAN like any model: one
abstract state from shapes, one set of logical-axis shardings, one checkpoint. Parameters
split by top-level name into the two optimizer groups ("generator", "discriminator");
the codebook EMA state is the non-trainable `model_state` under "generator".
"""
from __future__ import annotations

from flax import nnx

from mufm.codec.model import Codec, CodecConfig
from mufm.codec.discriminators import DiscriminatorConfig, Discriminators

GROUPS = ("generator", "discriminator")


class CodecGAN(nnx.Module):
    def __init__(self, codec: CodecConfig, discriminator: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.generator = Codec(codec, rngs=rngs)
        self.discriminator = Discriminators(discriminator, rngs=rngs)


def make_codec_gan_fn(codec: CodecConfig, discriminator: DiscriminatorConfig):
    def make(rngs: nnx.Rngs) -> CodecGAN:
        return CodecGAN(codec, discriminator, rngs=rngs)
    return make
