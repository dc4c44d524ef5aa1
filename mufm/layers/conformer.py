"""Conformer blocks (Gulati et al. 2020), as in w2v-BERT's contrastive and MLM modules.

One block, on `[batch, length, embed]` frames with a padding mask:

    x = x + 1/2 FF(x)                 macaron half-step feed-forward (LN, swish MLP)
    x = x + MHSA(LN(x))               self-attention, bidirectional, relative positions
    x = x + Conv(x)                   LN, pointwise + GLU, depthwise conv, LN, swish, pointwise
    x = x + 1/2 FF(x)
    x = LN(x)

Choices, and why:
- Relative positions are the T5 bucketed bias of `mufm.layers.positions` (bidirectional),
  one table per stack shared by its layers as in T5, added to the attention logits. A
  bias, not rotary: it needs no even head dimension and a fixed table extrapolates to
  longer inputs (an embedding at 25 Hz over 30 s is 750 frames; training crops are shorter).
- The conv module's norm is a LayerNorm where the Conformer paper has BatchNorm: batch
  statistics would make a frame's output depend on the other utterances and on padding,
  need running averages in the train state and a cross-device reduction per layer; a
  per-frame norm has none of that (ESPnet and fairseq offer the same switch).
- The depthwise conv is written as K shifted multiply-adds on channels named `mlp`: it is
  elementwise over channels, so with the pointwise convs (embed -> mlp -> embed) it shards
  like a transformer MLP and no grouped convolution has to be partitioned.

Padding. `mask[b, t]` marks valid frames. Padded frames are masked out as attention keys
and zeroed before the depthwise conv, and every other op is per frame, so what padded frames
hold never changes a valid frame's output (tested).

Dropout (`dropout_rate`) comes from explicit keys as in the stage LM: layer l of a stack
uses fold_in(key, l), split into one key per dropout site.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mufm.layers.attention import NEG_INF, Attention
from mufm.layers.dropout import dropout
from mufm.layers.dtypes import DTYPES
from mufm.layers.linear import Dense, param
from mufm.layers.mlp import MLP
from mufm.layers.norms import LayerNorm
from mufm.layers.positions import RelativePositionBias
from mufm.layers.remat import remat_policy
from mufm.layers.stack import layer_stack
from mufm.parallel.logical import constrain

FRAMES = ("batch", "length", "embed")


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """The shape of one conformer stack (a family's config builds it; not bound in gin)."""
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int | None = None  # default d_model // num_heads
    d_ff: int = 1024
    conv_kernel: int = 15  # depthwise conv width (odd: centred, non-causal)
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    dropout_rate: float = 0.0
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel={self.conv_kernel} must be odd (a centred window)")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
        remat_policy(self.remat_policy)

    @property
    def kv_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]


def conformer_params(cfg: ConformerConfig) -> int:
    """Weights a frame multiplies through in one block (2 FFs, attention, conv module)."""
    ff = 2 * 2 * cfg.d_model * cfg.d_ff
    attn = 4 * cfg.d_model * cfg.num_heads * cfg.kv_dim
    conv = 3 * cfg.d_model * cfg.d_model + cfg.conv_kernel * cfg.d_model
    return ff + attn + conv


class DepthwiseConv1d(nnx.Module):
    """y[t, c] = b[c] + sum_k w[k, c] x[t + k - (K - 1) / 2, c], zero outside [0, T)."""

    def __init__(self, channels: int, kernel: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        # Fan-in of a depthwise filter is its width.
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                 in_axis=0, out_axis=1)
        self.kernel = param(rngs, init, (kernel, channels), ("conv_width", "mlp"))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (channels,), ("mlp",))
        self.width, self.dtype = kernel, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        t, half = x.shape[1], (self.width - 1) // 2
        xp = jnp.pad(x.astype(self.dtype), ((0, 0), (half, half), (0, 0)))
        w = self.kernel[...].astype(self.dtype)
        y = sum(xp[:, k:k + t] * w[k] for k in range(self.width))
        return y + self.bias[...].astype(self.dtype)


class ConvModule(nnx.Module):
    def __init__(self, cfg: ConformerConfig, *, rngs: nnx.Rngs):
        dtype, d = cfg.compute_dtype, cfg.d_model
        dense = lambda i_ax, o_ax: Dense((d,), (d,), in_axes=i_ax, out_axes=o_ax, dtype=dtype,
                                         rngs=rngs)
        self.norm = LayerNorm(d, dtype=dtype, rngs=rngs)
        self.value, self.gate = dense(("embed",), ("mlp",)), dense(("embed",), ("mlp",))
        self.depthwise = DepthwiseConv1d(d, cfg.conv_kernel, dtype=dtype, rngs=rngs)
        self.conv_norm = LayerNorm(d, axis="mlp", dtype=dtype, rngs=rngs)
        self.out = dense(("mlp",), ("embed",))

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = self.norm(x)
        h = checkpoint_name(self.value(h), "conv_value") * jax.nn.sigmoid(
            checkpoint_name(self.gate(h), "conv_gate"))  # GLU
        # Padded frames must not reach valid ones through the conv's window.
        h = constrain(h * mask[..., None].astype(h.dtype), ("batch", "length", "mlp"))
        h = jax.nn.silu(self.conv_norm(self.depthwise(h)))
        return checkpoint_name(self.out(h), "conv_out")


class ConformerBlock(nnx.Module):
    def __init__(self, cfg: ConformerConfig, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        ff = lambda: MLP(cfg.d_model, cfg.d_ff, activation="swish", dropout_rate=cfg.dropout_rate,
                         dtype=dtype, rngs=rngs)
        norm = lambda: LayerNorm(cfg.d_model, dtype=dtype, rngs=rngs)
        self.ff1_norm, self.ff1 = norm(), ff()
        self.attn_norm = norm()
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.kv_dim, use_rope=False,
                              dropout_rate=cfg.dropout_rate, dtype=dtype, rngs=rngs)
        self.conv = ConvModule(cfg, rngs=rngs)
        self.ff2_norm, self.ff2 = norm(), ff()
        self.final_norm = norm()
        self.dropout_rate = cfg.dropout_rate

    def __call__(self, x: jax.Array, *, mask: jax.Array, bias: jax.Array,
                 key: jax.Array | None = None) -> jax.Array:
        """x [b, t, d]; mask [b, t] (valid frames); bias [b, h, t, t] additive (fp32)."""
        keys = [None] * 8 if key is None else list(jax.random.split(key, 8))
        drop = lambda h, i: dropout(h, self.dropout_rate, keys[i])
        x = constrain(x + 0.5 * drop(self.ff1(self.ff1_norm(x), keys[0]), 1), FRAMES)
        positions = jnp.zeros(x.shape[:2], jnp.int32)  # unused: positions are in `bias`
        h, _ = self.attn(self.attn_norm(x), positions=positions, bias=bias, key=keys[2])
        x = constrain(x + drop(h, 3), FRAMES)
        x = constrain(x + drop(self.conv(x, mask), 4), FRAMES)
        x = constrain(x + 0.5 * drop(self.ff2(self.ff2_norm(x), keys[5]), 6), FRAMES)
        return constrain(self.final_norm(x), FRAMES)


class ConformerStack(nnx.Module):
    """`num_layers` conformer blocks sharing one relative-position table; scanned over a
    leading `layers` axis (`scan_layers`, compile time independent of depth) or unrolled."""

    def __init__(self, cfg: ConformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.blocks = layer_stack(lambda r: ConformerBlock(cfg, rngs=r), cfg.num_layers,
                                  scan=cfg.scan_layers, rngs=rngs)
        self.relpos = RelativePositionBias(cfg.num_heads, num_buckets=cfg.relpos_num_buckets,
                                           max_distance=cfg.relpos_max_distance,
                                           bidirectional=True, rngs=rngs)

    def attention_bias(self, mask: jax.Array) -> jax.Array:
        """[b, h, t, t]: padded keys masked, plus the relative-position bias."""
        b, t = mask.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        keys = jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)
        return keys + self.relpos(positions, positions)

    def __call__(self, x: jax.Array, mask: jax.Array, *, key: jax.Array | None = None,
                 num_layers: int | None = None) -> jax.Array:
        """x [b, t, d], mask [b, t] -> [b, t, d] after the first `num_layers` (static;
        default all) blocks."""
        cfg = self.cfg
        n = cfg.num_layers if num_layers is None else int(num_layers)
        if not 0 <= n <= cfg.num_layers:
            raise ValueError(f"num_layers={num_layers} outside [0, {cfg.num_layers}]")
        if n == 0:
            return x
        bias = self.attention_bias(mask)

        def run_block(graphdef, state, x, layer):
            block_key = None if key is None else jax.random.fold_in(key, layer)
            return nnx.merge(graphdef, state)(x, mask=mask, bias=bias, key=block_key)

        if cfg.remat_policy != "none":
            run_block = jax.checkpoint(run_block, policy=remat_policy(cfg.remat_policy),
                                       static_argnums=(0,), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)
            state = jax.tree.map(lambda a: a[:n], state)

            def body(x, xs):
                layer_state, layer = xs
                return run_block(graphdef, layer_state, x, layer), None

            x, _ = jax.lax.scan(body, x, (state, jnp.arange(n)))
            return x
        for i, block in enumerate(self.blocks[:n]):
            graphdef, state = nnx.split(block)
            x = run_block(graphdef, state, x, i)
        return x
