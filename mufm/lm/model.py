"""The stage transformer: one decoder-only Flax NNX model for every stage of the cascade.

Stages differ only in how their token sequences are laid out (mufm/lm/layouts.py, to come);
the network is the same: token embedding, N pre-norm blocks (RMSNorm, multi-head attention
with RoPE or a shared T5 relative-position bias, GELU/SwiGLU MLP), final RMSNorm, logits.
Parameters are fp32; compute runs in `dtype` (bf16 on accelerators).
"""
from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from mufm.layers.attention import NEG_INF, Attention, causal_key_counts, init_cache
from mufm.layers.dropout import dropout
from mufm.layers.dtypes import DTYPES
from mufm.layers.linear import Dense, Embed
from mufm.layers.mlp import MLP
from mufm.layers.norms import RMSNorm
from mufm.layers.positions import RelativePositionBias
from mufm.layers.remat import remat_policy
from mufm.layers.stack import layer_stack
from mufm.parallel.logical import constrain

@gin.configurable
@dataclasses.dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 1024
    d_model: int = 512
    num_layers: int = 8
    num_heads: int = 8
    head_dim: int | None = None  # default d_model // num_heads
    d_ff: int = 2048
    activation: str = "gelu"  # gelu | swiglu
    position: str = "rope"  # rope | relative
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    rope_max_wavelength: float = 10_000.0
    dropout_rate: float = 0.0
    dtype: str = "bfloat16"  # compute dtype; params stay fp32
    scan_layers: bool = True
    remat_policy: str = "none"
    tie_embeddings: bool = False
    # > 0: causal attention in query blocks of this size, skipping masked key blocks
    # (mufm.layers.attention); 0: the full seq x seq product.
    attention_query_block: int = 0

    def __post_init__(self):
        if self.position not in ("rope", "relative"):
            raise ValueError(f"LMConfig.position={self.position!r}: use 'rope' or 'relative'")
        if self.dtype not in DTYPES:
            raise ValueError(f"LMConfig.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        remat_policy(self.remat_policy)  # validates the name early

    @property
    def kv_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


def param_count(cfg: LMConfig) -> dict[str, int]:
    """Parameter counts: `matmul` are the weights every token multiplies through."""
    attn = 4 * cfg.d_model * cfg.num_heads * cfg.kv_dim
    mlp = (3 if cfg.activation == "swiglu" else 2) * cfg.d_model * cfg.d_ff
    logits = cfg.d_model * cfg.vocab_size
    embed = cfg.vocab_size * cfg.d_model
    norms = (2 * cfg.num_layers + 1) * cfg.d_model
    rel = cfg.relpos_num_buckets * cfg.num_heads if cfg.position == "relative" else 0
    matmul = cfg.num_layers * (attn + mlp) + logits
    total = cfg.num_layers * (attn + mlp) + embed + norms + rel + (0 if cfg.tie_embeddings else logits)
    return {"matmul": matmul, "total": total}


def train_flops_per_token(cfg: LMConfig, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward, no remat recompute).

    6 * N_matmul (2 per multiply-add forward, 4 backward) plus attention scores and
    weighted sum: forward 2 * 2 * keys * heads * head_dim per layer, x3 for training
    (PaLM, appendix B), where `keys` is the mean number of keys a query is multiplied with
    as the implementation runs it: seq_len for the full masked product, fewer with causal
    query blocks (`attention_query_block`), which skip fully masked key blocks.
    """
    blocks = causal_key_counts(seq_len, cfg.attention_query_block)
    mean_keys = sum(n_q * n_k for n_q, n_k in blocks) / seq_len
    attn = 12 * cfg.num_layers * mean_keys * cfg.num_heads * cfg.kv_dim
    return 6.0 * param_count(cfg)["matmul"] + attn


class Block(nnx.Module):
    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        out_scale = 1.0 / (2 * cfg.num_layers)  # variance scale of residual outputs: depth-stable init
        self.attn_norm = RMSNorm(cfg.d_model, dtype=dtype, rngs=rngs)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.kv_dim, use_rope=cfg.position == "rope",
                              rope_max_wavelength=cfg.rope_max_wavelength,
                              dropout_rate=cfg.dropout_rate, dtype=dtype,
                              out_init_scale=out_scale, query_block=cfg.attention_query_block,
                              rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, dtype=dtype, rngs=rngs)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, activation=cfg.activation, dropout_rate=cfg.dropout_rate,
                       dtype=dtype, out_init_scale=out_scale, rngs=rngs)
        self.dropout_rate = cfg.dropout_rate

    def __call__(self, x, *, positions, bias, key=None, cache=None, cache_index=None):
        keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
        h, cache = self.attn(self.attn_norm(x), positions=positions, bias=bias, key=keys[0],
                             cache=cache, cache_index=cache_index)
        x = constrain(x + dropout(h, self.dropout_rate, keys[1]), ("batch", "length", "embed"))
        h = self.mlp(self.mlp_norm(x), keys[2])
        x = constrain(x + dropout(h, self.dropout_rate, keys[3]), ("batch", "length", "embed"))
        return x, cache


class StageLM(nnx.Module):
    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = cfg.compute_dtype
        self.embed = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)
        self.blocks = layer_stack(lambda r: Block(cfg, rngs=r), cfg.num_layers,
                                  scan=cfg.scan_layers, rngs=rngs)
        if cfg.position == "relative":
            self.relpos = RelativePositionBias(cfg.num_heads, num_buckets=cfg.relpos_num_buckets,
                                               max_distance=cfg.relpos_max_distance, rngs=rngs)
        self.final_norm = RMSNorm(cfg.d_model, dtype=dtype, rngs=rngs)
        if not cfg.tie_embeddings:
            self.logits = Dense((cfg.d_model,), (cfg.vocab_size,), in_axes=("embed",),
                                out_axes=("vocab",), dtype=dtype, rngs=rngs)

    # -- training / scoring -------------------------------------------------------------
    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """tokens [b, t] -> fp32 logits [b, t, vocab]. Packed rows pass segment_ids/positions."""
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        idx = jnp.arange(t)
        mask = (idx[:, None] >= idx[None, :])[None]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        bias = jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None]
        if self.cfg.position == "relative":
            bias = bias + self.relpos(positions, positions)
        x = self.embed(tokens)
        x = dropout(x, self.cfg.dropout_rate,
                    None if dropout_rng is None else jax.random.fold_in(dropout_rng, self.cfg.num_layers))  # layers use 0..L-1
        x, _ = self._blocks(x, positions=positions, bias=bias, dropout_rng=dropout_rng)
        return self._logits(x)

    # -- incremental decoding -----------------------------------------------------------
    def init_cache(self, batch: int, max_len: int) -> dict:
        """{"k", "v"}: per layer [batch * heads, max_len, head_dim] (mufm.layers.attention
        says why that layout). Scanned layers stack them
        on a leading layers axis (the scan's xs); unrolled layers keep one array per layer
        (a tuple), so each step updates every layer's buffer in place instead of slicing
        and re-stacking the whole cache."""
        one = lambda: init_cache(batch, max_len, self.cfg.num_heads, self.cfg.kv_dim,
                                 self.cfg.compute_dtype)
        if self.cfg.scan_layers:
            return jax.tree.map(lambda a: jnp.zeros((self.cfg.num_layers,) + a.shape, a.dtype), one())
        layers = [one() for _ in range(self.cfg.num_layers)]
        return {name: tuple(c[name] for c in layers) for name in ("k", "v")}

    def decode(self, tokens: jax.Array, cache: dict, index: jax.Array) -> tuple[jax.Array, dict]:
        """Feeds tokens [b, t] at positions index..index+t-1; returns their logits and the cache."""
        b, t = tokens.shape
        max_len = jax.tree.leaves(cache)[0].shape[-2]
        positions = jnp.broadcast_to(index + jnp.arange(t, dtype=jnp.int32), (b, t))
        key_pos = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (b, max_len))
        mask = key_pos[:, None, :] <= positions[:, :, None]
        bias = jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None]
        if self.cfg.position == "relative":
            bias = bias + self.relpos(positions, key_pos)
        x = self.embed(tokens)
        x, cache = self._blocks(x, positions=positions, bias=bias, cache=cache, cache_index=index)
        return self._logits(x), cache

    # -- internals ----------------------------------------------------------------------
    def _logits(self, x: jax.Array) -> jax.Array:
        x = self.final_norm(x)
        logits = self.embed.attend(x) if self.cfg.tie_embeddings else self.logits(x)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def _blocks(self, x, *, positions, bias, dropout_rng=None, cache=None, cache_index=None):
        cfg = self.cfg

        def run_block(graphdef, state, x, layer, layer_cache):
            key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, layer)
            block = nnx.merge(graphdef, state)
            return block(x, positions=positions, bias=bias, key=key, cache=layer_cache,
                         cache_index=cache_index)

        policy = remat_policy(cfg.remat_policy)
        if cfg.remat_policy != "none":
            run_block = jax.checkpoint(run_block, policy=policy, static_argnums=(0,),
                                       prevent_cse=not cfg.scan_layers)

        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(x, xs):
                layer_state, layer, layer_cache = xs
                x, layer_cache = run_block(graphdef, layer_state, x, layer, layer_cache)
                return x, layer_cache

            layers = jnp.arange(cfg.num_layers)
            x, new_cache = jax.lax.scan(body, x, (state, layers, cache))
            return x, new_cache

        new_caches = []
        for i, block in enumerate(self.blocks):
            graphdef, state = nnx.split(block)
            layer_cache = None if cache is None else {"k": cache["k"][i], "v": cache["v"][i]}
            x, layer_cache = run_block(graphdef, state, x, i, layer_cache)
            new_caches.append(layer_cache)
        if cache is None:
            return x, None
        return x, {name: tuple(c[name] for c in new_caches) for name in ("k", "v")}
