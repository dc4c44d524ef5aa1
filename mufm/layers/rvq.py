"""Residual vector quantizer (SoundStream / EnCodec style), reusable by the codec and MuLan.

N levels x K codes of dimension D. Level l quantizes the residual left by levels < l to its
nearest code; the quantized vector is the sum over the levels used.

Training-time behaviour (`train=True`, all randomness from the explicit `key`):
- codebooks are not trained by gradients: they are exponential moving averages (decay 0.99)
  of the frames assigned to each code (counts and sums, Laplace-smoothed);
- each level is initialised by k-means (k-means++ seeding) on the residuals of the first
  training batch;
- a code whose EMA count falls below `dead_threshold` is restarted at a random (active)
  frame of the batch, with its count set to the threshold so it gets a fair chance;
- quantizer dropout: each example draws n_q uniformly in [1, N]; levels >= n_q are masked
  out of its output, of the commitment loss and of the codebook statistics;
- straight-through gradients: output = x + stop_gradient(quantized - x).

The EMA state is held in `CodebookState` variables (not `nnx.Param`, so optimizers never see
them). A training call assigns the new state to those variables; a pure jitted step gets it
back with `nnx.state(model, CodebookState)` (see `mufm.codec.model.apply_codec`). The
levels run in one `lax.scan` over a leading `rvq` axis, so the compile size does not grow
with N.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mufm.layers.kmeans import kmeans, sample_frames, sq_distances
from mufm.parallel.logical import constrain


class CodebookState(nnx.Variable):
    """EMA codebook statistics of a vector quantizer; updated by the forward pass."""


def _state(value, axes) -> CodebookState:
    return CodebookState(value, out_sharding=tuple(axes), eager_sharding=False)


class ResidualVectorQuantizer(nnx.Module):
    def __init__(self, num_levels: int, codebook_size: int, dim: int, *, decay: float = 0.99,
                 dead_threshold: float = 2.0, kmeans_iters: int = 10, epsilon: float = 1e-5,
                 quantizer_dropout: bool = True, rngs: nnx.Rngs):
        self.num_levels, self.codebook_size, self.dim = num_levels, codebook_size, dim
        self.decay, self.dead_threshold = decay, dead_threshold
        self.kmeans_iters, self.epsilon = kmeans_iters, epsilon
        self.quantizer_dropout = quantizer_dropout
        n, k, d = num_levels, codebook_size, dim
        # Before k-means runs (or when a model is only ever used for inference from scratch),
        # codes are unit-scale random vectors; the counts start at the threshold so nothing is
        # "dead" before the first statistics arrive.
        init = jax.random.normal(rngs.params(), (n, k, d), jnp.float32)
        self.codebook = _state(init, ("rvq", "codebook", "codebook_dim"))
        self.ema_count = _state(jnp.full((n, k), dead_threshold, jnp.float32), ("rvq", "codebook"))
        self.ema_sum = _state(init * dead_threshold, ("rvq", "codebook", "codebook_dim"))
        self.initialized = _state(jnp.zeros((n,), jnp.int32), ("rvq",))

    # -- inference ------------------------------------------------------------------------
    def encode(self, x: jax.Array, num_levels: int | None = None) -> jax.Array:
        """x [..., D] -> codes [..., q] (int32) with q = num_levels or N."""
        q = self._levels(num_levels)
        flat = x.reshape(-1, self.dim).astype(jnp.float32)

        def level(residual, codebook):
            codes = jnp.argmin(sq_distances(residual, codebook), -1).astype(jnp.int32)
            return residual - codebook[codes], codes

        _, codes = jax.lax.scan(level, flat, self.codebook[...][:q])
        return codes.T.reshape(*x.shape[:-1], q)

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes [..., q'] with q' <= N -> the sum of the first q' levels' vectors [..., D]."""
        q = codes.shape[-1]
        self._levels(q)
        books = self.codebook[...][:q]  # [q, K, D]
        vecs = jax.vmap(lambda book, c: book[c], in_axes=(0, -1), out_axes=0)(books, codes)
        return vecs.sum(0)

    def _levels(self, num_levels):
        q = self.num_levels if num_levels is None else int(num_levels)
        if not 1 <= q <= self.num_levels:
            raise ValueError(f"num_levels={num_levels} outside [1, {self.num_levels}]")
        return q

    # -- training / evaluation forward ------------------------------------------------------
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None,
                 num_levels: int | None = None, mask: jax.Array | None = None):
        """x [b, t, D] -> (quantized [b, t, D], codes [b, t, q], aux).

        `mask` [b, t] marks valid frames (padding frames never update codebooks).
        `num_levels` (static) limits the levels when not training. aux holds
        `commitment_loss` (scalar, mean over levels) and per-level arrays [q]:
        `commitment`, `perplexity`, `usage` (fraction of codes hit in the batch),
        `restarts` (dead codes restarted this step), plus `num_levels` [b] (n_q per example).
        """
        if train and key is None:
            raise ValueError("training the quantizer needs an explicit PRNG key")
        b, t, d = x.shape
        q = self.num_levels if train else self._levels(num_levels)
        x = x.astype(jnp.float32)
        if mask is None:
            mask = jnp.ones((b, t), jnp.float32)
        mask = mask.astype(jnp.float32)
        if train:
            key, drop_key = jax.random.split(key)
        if train and self.quantizer_dropout:
            n_q = jax.random.randint(drop_key, (b,), 1, q + 1)
        else:
            n_q = jnp.full((b,), q, jnp.int32)
        active = (jnp.arange(q)[:, None] < n_q[None, :]).astype(jnp.float32)  # [q, b]
        weights = (active[:, :, None] * mask[None]).reshape(q, b * t)
        keys = jax.random.split(key, q) if train else jnp.zeros((q,), jnp.uint32)  # unused
        state = (self.codebook[...][:q], self.ema_count[...][:q], self.ema_sum[...][:q],
                 self.initialized[...][:q])
        flat = jax.lax.stop_gradient(x).reshape(b * t, d)

        def level(carry, xs):
            residual, total = carry
            (codebook, count, ema_sum, inited), w, k = xs
            if train:
                codebook, count, ema_sum = self._maybe_kmeans(k, residual, w, codebook, count,
                                                              ema_sum, inited)
            codes = jnp.argmin(sq_distances(residual, codebook), -1)
            quant = codebook[codes]
            onehot = jax.nn.one_hot(codes, self.codebook_size, dtype=jnp.float32) * w[:, None]
            counts = onehot.sum(0)
            probs = counts / jnp.maximum(counts.sum(), 1.0)
            metrics = {
                "perplexity": jnp.exp(-jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-12)))),
                "usage": jnp.mean((counts > 0).astype(jnp.float32)),
            }
            if train:
                new = self._ema_update(jax.random.fold_in(k, 1), residual, w, onehot, counts,
                                       codebook, count, ema_sum)
                metrics["restarts"] = new[3]
                new_state = (new[0], new[1], new[2], jnp.ones_like(inited))
            else:
                metrics["restarts"] = jnp.zeros((), jnp.int32)
                new_state = (codebook, count, ema_sum, inited)
            quant = quant * w[:, None]
            total = total + quant
            return (residual - quant, total), (codes.astype(jnp.int32), metrics, new_state, total)

        (_, quantized), (codes, metrics, new_state, partial) = jax.lax.scan(
            level, (flat, jnp.zeros_like(flat)), (state, weights, keys))
        if train:
            self.codebook[...] = self.codebook[...].at[:q].set(new_state[0])
            self.ema_count[...] = self.ema_count[...].at[:q].set(new_state[1])
            self.ema_sum[...] = self.ema_sum[...].at[:q].set(new_state[2])
            self.initialized[...] = self.initialized[...].at[:q].set(new_state[3])
        quantized = quantized.reshape(b, t, d)
        commit = self._commitment(x.reshape(b * t, d), partial, weights)
        out = x + jax.lax.stop_gradient(quantized - x)
        out = constrain(out, ("batch", "time", "codebook_dim"))
        aux = dict(metrics)
        aux["commitment"] = commit
        aux["commitment_loss"] = jnp.mean(commit)
        aux["num_levels"] = n_q
        return out, codes.transpose(1, 0).reshape(b, t, q), aux

    @staticmethod
    def _commitment(x, partial, weights):
        """Per level l: mean over its active frames of ||x - sg(sum of levels <= l)||^2 / D.

        The gradient reaches the encoder through x only (codebooks are EMA). The loss is the
        mean over levels, so its scale does not grow with N."""
        err = jnp.mean(jnp.square(x[None] - jax.lax.stop_gradient(partial)), -1)  # [q, M]
        return jnp.sum(err * weights, -1) / jnp.maximum(weights.sum(-1), 1.0)

    def _maybe_kmeans(self, key, residual, w, codebook, count, ema_sum, inited):
        def init(_):
            c, sizes = kmeans(key, residual, w, self.codebook_size, self.kmeans_iters)
            return c, sizes, c * sizes[:, None]

        def keep(_):
            return codebook, count, ema_sum

        # Only initialise from a batch that actually has frames at this level.
        ready = (inited > 0) | (w.sum() <= 0)
        return jax.lax.cond(ready, keep, init, None)

    def _ema_update(self, key, residual, w, onehot, counts, codebook, count, ema_sum):
        decay, k = self.decay, self.codebook_size
        sums = onehot.T @ residual
        new_count = decay * count + (1.0 - decay) * counts
        new_sum = decay * ema_sum + (1.0 - decay) * sums
        total = new_count.sum()
        smoothed = (new_count + self.epsilon) / (total + k * self.epsilon) * total
        new_book = new_sum / smoothed[:, None]
        dead = new_count < self.dead_threshold
        fresh = sample_frames(key, residual, w, k)
        new_book = jnp.where(dead[:, None], fresh, new_book)
        new_sum = jnp.where(dead[:, None], fresh * self.dead_threshold, new_sum)
        new_count = jnp.where(dead, self.dead_threshold, new_count)
        # A level no example reached this step keeps its state untouched.
        any_active = w.sum() > 0
        pick = lambda a, b_: jnp.where(any_active, a, b_)
        restarts = jnp.where(any_active, dead.sum(), 0).astype(jnp.int32)
        return (pick(new_book, codebook), pick(new_count, count), pick(new_sum, ema_sum), restarts)
