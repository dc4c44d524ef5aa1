"""The jitted train and eval steps: pure functions of (state, batch) -> (state, metrics).

The dropout key is derived inside the step from a base key and `state.step`, so a resumed
run draws exactly the keys an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from mufm.train.state import ModelSpec, TrainState, merge_model


@dataclasses.dataclass(frozen=True)
class StepConfig:
    grad_accum_steps: int = 1
    z_loss: float = 0.0  # PaLM's log(Z)^2 penalty, keeps logits from drifting in bf16
    stream_names: Sequence[str] = ()
    seed: int = 0


def lm_loss(params, model_state, spec: ModelSpec, batch: dict, key, z_loss: float,
            num_streams: int):
    """Summed weighted cross-entropy (and stats) over a (micro-)batch."""
    model = merge_model(spec, params, model_state)
    logits = model(batch["decoder_input_tokens"], positions=batch.get("decoder_positions"),
                   segment_ids=batch.get("decoder_segment_ids"), dropout_rng=key)
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ce = log_z - target_logit
    loss_sum = jnp.sum((ce + z_loss * jnp.square(log_z)) * weights)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
    stats = {"loss_sum": jnp.sum(ce * weights), "correct": jnp.sum(correct),
             "weight": jnp.sum(weights)}
    if num_streams and "decoder_stream_ids" in batch:
        onehot = jax.nn.one_hot(batch["decoder_stream_ids"], num_streams) * weights[..., None]
        stats["stream_correct"] = jnp.einsum("bts,bt->s", onehot, correct)
        stats["stream_loss"] = jnp.einsum("bts,bt->s", onehot, ce)
        stats["stream_weight"] = jnp.sum(onehot, axis=(0, 1))
    return loss_sum, stats


def _split_micro(batch: dict, k: int) -> dict:
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} does not split into {k} micro-batches")
        return x.reshape((k, x.shape[0] // k) + x.shape[1:])
    return jax.tree.map(split, batch)


def _grads_and_stats(state: TrainState, spec: ModelSpec, batch: dict, key, cfg: StepConfig):
    n_streams = len(cfg.stream_names)
    grad_fn = jax.grad(lm_loss, has_aux=True)

    def micro(i, mb):
        return grad_fn(state.params, state.model_state, spec, mb, jax.random.fold_in(key, i),
                       cfg.z_loss, n_streams)

    if cfg.grad_accum_steps == 1:
        return micro(0, batch)
    micro_batches = _split_micro(batch, cfg.grad_accum_steps)

    def body(carry, xs):
        i, mb = xs
        g, s = micro(i, mb)
        return jax.tree.map(jnp.add, carry, (g, s)), None

    zeros = jax.eval_shape(micro, 0, jax.tree.map(lambda x: x[0], micro_batches))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
    (grads, stats), _ = jax.lax.scan(body, zeros, (jnp.arange(cfg.grad_accum_steps), micro_batches))
    return grads, stats


def summarize(stats: dict, stream_names: Sequence[str]) -> dict[str, jax.Array]:
    w = jnp.maximum(stats["weight"], 1.0)
    out = {"loss": stats["loss_sum"] / w, "accuracy": stats["correct"] / w,
           "tokens": stats["weight"]}
    if "stream_weight" in stats:
        sw = jnp.maximum(stats["stream_weight"], 1.0)
        for i, name in enumerate(stream_names):
            out[f"accuracy/{name}"] = stats["stream_correct"][i] / sw[i]
            out[f"loss/{name}"] = stats["stream_loss"][i] / sw[i]
    return out


def train_step(state: TrainState, batch: dict, *, spec: ModelSpec, tx: optax.GradientTransformation,
               schedule: optax.Schedule, cfg: StepConfig) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
    grads, stats = _grads_and_stats(state, spec, batch, key, cfg)
    # Gradients of summed losses: normalise by the tokens of the whole (global) batch.
    weight = jnp.maximum(stats["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    metrics = summarize(stats, cfg.stream_names)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    new_state = state.advance(ok, params=new_params, opt_state=new_opt)
    metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step),
                   nonfinite_skipped=new_state.nonfinite_skipped,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, spec: ModelSpec, cfg: StepConfig) -> dict:
    _, stats = lm_loss(state.params, state.model_state, spec, batch, None, 0.0, len(cfg.stream_names))
    return stats
