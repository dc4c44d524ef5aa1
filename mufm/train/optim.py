"""Optimizers and learning-rate schedules from optax, configured in gin."""
from __future__ import annotations

import dataclasses

import gin
import jax
import optax


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"  # adamw | adafactor
    learning_rate: float = 1e-3
    schedule: str = "cosine"  # cosine | rsqrt | constant
    warmup_steps: int = 100
    decay_steps: int | None = None  # default: the run's train_steps
    end_learning_rate_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0
    # Micro-batches per step: the step scans over batch/grad_accum_steps slices and sums
    # their gradients, so memory is that of one micro-batch.
    grad_accum_steps: int = 1

    def __post_init__(self):
        if self.name not in ("adamw", "adafactor"):
            raise ValueError(f"OptimizerConfig.name={self.name!r}: use 'adamw' or 'adafactor'")
        if self.schedule not in ("cosine", "rsqrt", "constant"):
            raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: use cosine, rsqrt or constant")
        if self.grad_accum_steps < 1:
            raise ValueError("OptimizerConfig.grad_accum_steps must be >= 1")


def make_schedule(cfg: OptimizerConfig, train_steps: int) -> optax.Schedule:
    warmup = max(int(cfg.warmup_steps), 0)
    peak = cfg.learning_rate
    if cfg.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        decay = max((cfg.decay_steps or train_steps) - warmup, 1)
        main = optax.cosine_decay_schedule(peak, decay, alpha=cfg.end_learning_rate_ratio)
    else:  # rsqrt, T5-style: peak until warmup then peak * sqrt(warmup / step)
        w = max(warmup, 1)
        main = lambda count: peak * jax.lax.rsqrt((count + w) / w)
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


# Weight decay applies to the weights of linear maps and embeddings, by name: every layer
# calls them `kernel` / `embedding`. Norm scales, conv biases and the relative-position
# bias table ([buckets, heads], 2-D but a table of additive biases) are not decayed.
DECAYED_NAMES = ("kernel", "embedding")


def decay_mask(params):
    """True for the leaves weight decay applies to (their last path key is in DECAYED_NAMES)."""
    def decayed(path, _):
        last = path[-1]
        return str(getattr(last, "key", getattr(last, "name", last))) in DECAYED_NAMES
    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg: OptimizerConfig, train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, train_steps)
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name == "adamw":
        parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, mask=decay_mask))
    else:
        # Adafactor keeps its own second-moment decay (step^-0.8); b1/b2/eps are Adam's.
        parts.append(optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                                     weight_decay_mask=decay_mask))
    return optax.chain(*parts), schedule


def per_group(txs: dict[str, optax.GradientTransformation]) -> optax.GradientTransformation:
    """One transformation over a params dict whose top-level keys are groups, each updated by
    its own optimizer (a GAN's generator and discriminator). Its state is the plain dict
    {group: state}. `update` takes gradients of any subset of the groups: it returns
    updates for those and leaves the other groups' statistics untouched (a GAN warm-up
    trains the generator alone without running the discriminator's Adam over zeros).
    """
    def init(params):
        if set(params) != set(txs):
            raise ValueError(f"parameter groups {sorted(params)} do not match optimizers "
                             f"{sorted(txs)}")
        return {name: tx.init(params[name]) for name, tx in txs.items()}

    def update(updates, state, params=None):
        unknown = set(updates) - set(txs)
        if unknown:
            raise ValueError(f"gradients for groups {sorted(unknown)} that have no optimizer "
                             f"(groups: {sorted(txs)})")
        out, new_state = {}, dict(state)
        for name in updates:
            out[name], new_state[name] = txs[name].update(
                updates[name], state[name], None if params is None else params[name])
        return out, new_state

    return optax.GradientTransformation(init, update)
