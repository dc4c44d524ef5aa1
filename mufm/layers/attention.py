"""Multi-head self-attention with RoPE or an additive bias, and a KV cache for decoding.

Training and scoring can run the causal attention in query blocks (`query_block`): block i
attends only to keys [0, end of block i), skipping key blocks the causal mask would zero.
The result is the same; the work is (n+1)/(2n) of the full T x T product for n blocks and
the score tiles are smaller (on CPU it halves attention time at T=1024).

The cache is a plain dict of arrays {"k", "v": [batch * heads, max_len, head_dim]} passed
in and returned, so decoding loops stay pure functions. Writing at `index` and attending
over all `max_len` slots (masked by position) serves prefill (t tokens) and steps (1 token)
with the same code. The layout is what the cached score and weighted-sum matmuls read
directly, one batch dimension and no size-1 one: with slots before heads XLA:CPU
transposed the whole cache in every layer of every step (a step at batch 8 cost 10x one
at batch 1 on the base shape), and with separate [batch, heads] axes at batch 1 it fused
the cache update twice (once reshaped for the dot) and copied each layer's cache three
times per step (mufm/bench/sample.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mufm.layers.dropout import dropout
from mufm.layers.linear import Dense
from mufm.layers.positions import apply_rope
from mufm.parallel.logical import constrain

NEG_INF = -1e9  # large finite: fully-masked rows (padding) stay finite instead of NaN


def causal_key_counts(seq_len: int, query_block: int) -> list[tuple[int, int]]:
    """(queries, keys) per query block of a causal attention over seq_len tokens."""
    if query_block <= 0 or query_block >= seq_len:
        return [(seq_len, seq_len)]
    return [(min(s + query_block, seq_len) - s, min(s + query_block, seq_len))
            for s in range(0, seq_len, query_block)]


def _attend(q, k, v, bias, dropout_rate, key):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    weights = jax.nn.softmax(logits + bias, axis=-1).astype(v.dtype)
    weights = dropout(weights, dropout_rate, key)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """softmax(q k^T + bias) v for q [b, t, h, d] (already scaled) over cache slots k/v
    [b * h, s, d]; bias broadcastable to [b, h, t, s]. Only q and the output (t rows) are
    transposed, never the cache."""
    b, t, h, d = q.shape
    q = jnp.swapaxes(q, 1, 2).reshape(b * h, t, d)
    logits = jnp.einsum("ntd,nsd->nts", q, k).astype(jnp.float32)
    bias = jnp.broadcast_to(bias, (b, h, t, k.shape[1])).reshape(b * h, t, -1)
    weights = jax.nn.softmax(logits + bias, axis=-1).astype(v.dtype)
    ctx = jnp.einsum("nts,nsd->ntd", weights, v)
    return jnp.swapaxes(ctx.reshape(b, h, t, d), 1, 2)


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, *,
                   query_block: int = 0, dropout_rate: float = 0.0,
                   key: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T + bias) v for q [b, t, h, d] (already scaled), k/v [b, s, h, d].

    With `query_block`, the attention must be causal over a prefix (s == t): block i only
    meets the keys up to its last query, since later keys are masked for all of it.
    """
    if not query_block:
        return _attend(q, k, v, bias, dropout_rate, key)
    ctxs, start = [], 0
    for i, (n_q, n_k) in enumerate(causal_key_counts(q.shape[1], query_block)):
        block_key = None if key is None else jax.random.fold_in(key, i)
        ctxs.append(_attend(q[:, start:start + n_q], k[:, :n_k], v[:, :n_k],
                            bias[..., start:start + n_q, :n_k], dropout_rate, block_key))
        start += n_q
    return jnp.concatenate(ctxs, axis=1)


def init_cache(batch: int, max_len: int, num_heads: int, head_dim: int, dtype) -> dict:
    shape = (batch * num_heads, max_len, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


class Attention(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, head_dim: int, *, use_rope: bool,
                 rope_max_wavelength: float = 10_000.0, dropout_rate: float = 0.0,
                 dtype=jnp.float32, out_init_scale: float = 1.0, query_block: int = 0,
                 rngs: nnx.Rngs):
        proj = lambda: Dense((d_model,), (num_heads, head_dim), in_axes=("embed",),
                             out_axes=("heads", "kv"), dtype=dtype, rngs=rngs)
        self.query, self.key, self.value = proj(), proj(), proj()
        self.out = Dense((num_heads, head_dim), (d_model,), in_axes=("heads", "kv"),
                         out_axes=("embed",), dtype=dtype, init_scale=out_init_scale, rngs=rngs)
        self.use_rope, self.rope_max_wavelength = use_rope, rope_max_wavelength
        self.dropout_rate, self.dtype = dropout_rate, dtype
        self.head_dim = head_dim
        self.query_block = query_block

    def __call__(self, x: jax.Array, *, positions: jax.Array, bias: jax.Array,
                 key: jax.Array | None = None, cache: dict | None = None,
                 cache_index: jax.Array | None = None) -> tuple[jax.Array, dict | None]:
        """x [b, t, d]; positions [b, t]; bias additive, broadcastable to [b, h, t, k]."""
        axes = ("batch", "length", "heads", "kv")
        q = constrain(checkpoint_name(self.query(x), "query_proj"), axes)
        k = constrain(checkpoint_name(self.key(x), "key_proj"), axes)
        v = constrain(checkpoint_name(self.value(x), "value_proj"), axes)
        if self.use_rope:
            q = apply_rope(q, positions, self.rope_max_wavelength)
            k = apply_rope(k, positions, self.rope_max_wavelength)
        q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
        if cache is not None:
            # Only the t new rows are transposed to the cache's [b, h, s, d]; the update is
            # in place when the caller's cache buffer is donated or a loop carry.
            b, t, h, d = k.shape
            write = lambda c, new: jax.lax.dynamic_update_slice(
                c, jnp.swapaxes(new, 1, 2).reshape(b * h, t, d).astype(c.dtype), (0, cache_index, 0))
            cache = {"k": write(cache["k"], k), "v": write(cache["v"], v)}
            # Keys are cache slots rather than a causal prefix: no query blocks, no dropout.
            ctx = cached_attention(q, cache["k"].astype(q.dtype), cache["v"].astype(self.dtype), bias)
        else:
            ctx = attention_core(q, k, v, bias, query_block=self.query_block,
                                 dropout_rate=self.dropout_rate, key=key)
        ctx = constrain(ctx, axes)
        return checkpoint_name(self.out(ctx), "out_proj"), cache
