"""Sampling a stage LM: one jitted prefill + `lax.scan` decoding loop over a KV cache.

The prompt (conditioning and the target's BOS, `StageLayout.prompt`) goes through the
model in one call that fills a cache of prompt + new-token slots; then each step takes the
logits of the last token, keeps only the ids allowed at the next position (the layout's
`allowed_ranges`, so no id of another stream, a BOS or a special can ever be sampled),
applies classifier-free guidance, temperature, top-k and top-p, draws the token and feeds
it back. Nothing runs in Python per token.

Classifier-free guidance (`cfg_scale != 1`): the batch is [conditional rows; null rows],
the null rows built with `layout.prompt(example, drop_conditioning=True)`, row i paired
with row m + i. Guided logits = uncond + scale * (cond - uncond) over the allowed ids; the
one token drawn per pair is fed to both rows. With `cfg_scale == 1` the batch holds only
conditional rows (no second forward pass).

Randomness: step keys are `fold_in(key, position)` and each row (each pair, with guidance)
folds in its index, so a row's tokens depend on the key, its prompt and its index, not on
what else is in the batch, and the cached and uncached samplers draw the same noise. A
batch of keys (one per row, the exported cascade's per-request seeds) draws each row as
row 0 of a batch of its own: what a row gets never depends on its place in the batch.

`sample_uncached` recomputes the whole (padded) sequence every step with
`StageLM.__call__`: the reference the tests hold the cached loop to, and the recompute
baseline of mufm/bench/sample.py.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mufm.lm.layouts import MISSING, StageLayout, range_mask


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How a token is drawn from a step's logits. Frozen and hashable: a jit static arg."""
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely ids; 0: off
    top_p: float = 1.0  # keep the smallest set of ids with this much probability; 1: off
    cfg_scale: float = 1.0  # classifier-free guidance; 1: plain conditional, no null rows
    greedy: bool = False  # argmax whatever the temperature

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k} must be >= 0 (0 is off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p} must be in (0, 1]")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0


def _rows(batch: int, config: SamplingConfig) -> int:
    """Sequences being generated: pairs with guidance, rows without."""
    if config.guided:
        if batch % 2:
            raise ValueError(f"cfg_scale={config.cfg_scale} needs [conditional; null] rows, got "
                             f"an odd batch of {batch}")
        return batch // 2
    return batch


_portable = contextvars.ContextVar("portable_top_k", default=False)


@contextlib.contextmanager
def portable_top_k():
    """Traces `choose` with the k-th largest logit taken from a sort instead of
    `lax.top_k`, whose StableHLO composite TensorFlow 2.21's XLA cannot deserialize (the
    export, mufm/export). The value is the same, so are the tokens; the sort is slower."""
    token = _portable.set(True)
    try:
        yield
    finally:
        _portable.reset(token)


def _kth_largest(logits: jax.Array, k: int) -> jax.Array:
    """[b, 1]: the k-th largest value of each row."""
    if _portable.get():
        return jnp.sort(logits, axis=-1)[:, -k][:, None]
    return jax.lax.top_k(logits, k)[0][:, -1:]


def _row_temperatures(rows: int, config: SamplingConfig) -> jax.Array:
    """The config's temperature for each of `rows` rows (pairs), fp32 [rows]: what `choose`
    divides by when no per-row temperatures are given."""
    return jnp.full((rows,), config.temperature, jnp.float32)


def sample_temperatures(rows: int, config: SamplingConfig) -> jax.Array | None:
    """What the samplers pass `choose` for a config: its temperature as an array (an
    argument of the jitted program, not a constant XLA could fold into a multiplication by
    its reciprocal, so a temperature given at run time, the export's overrides, divides
    exactly as this does), or None for a greedy config (argmax alone)."""
    return None if config.is_greedy else _row_temperatures(rows, config)


def choose(logits: jax.Array, position: jax.Array, lo: jax.Array, hi: jax.Array,
           key: jax.Array, config: SamplingConfig,
           temperature: jax.Array | None = None) -> jax.Array:
    """The tokens [m] for `position` from the previous token's fp32 logits [b, vocab]
    (b = 2m with guidance, conditional rows first). `temperature` [m] replaces the
    config's, row by row (0: that row greedy); the samplers pass the config's own as an
    array too (`sample_temperatures`), so both divide alike and draw the same tokens."""
    logits = logits.astype(jnp.float32)
    m = _rows(logits.shape[0], config)
    allowed = range_mask(lo[position], hi[position], logits.shape[-1])
    if config.guided:
        cond, uncond = logits[:m], logits[m:]
        logits = uncond + config.cfg_scale * (cond - uncond)
    # Masking after guidance: the ids outside the range stay impossible whatever the scale.
    logits = jnp.where(allowed, logits, -jnp.inf)
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if config.greedy or (temperature is None and config.is_greedy):
        return best  # nothing to draw: no top-k, top-p or noise on the hot path
    if temperature is None:
        temperature = _row_temperatures(m, config)
    temperature = temperature.astype(jnp.float32)
    greedy = temperature == 0
    logits = logits / jnp.where(greedy, 1.0, temperature)[:, None]
    if config.top_k:
        kth = _kth_largest(logits, min(config.top_k, logits.shape[-1]))
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if config.top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely ids
        # The most likely id is always kept (before = 0), so top_p -> 0 is greedy.
        cut = jnp.min(jnp.where(before < config.top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= cut, logits, -jnp.inf)
    if key.ndim:  # one key per row (pair): each row draws as row 0 of a batch of its own
        row_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, position), 0))(key)
    else:
        step_key = jax.random.fold_in(key, position)
        row_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(m))
    drawn = jax.vmap(jax.random.categorical)(row_keys, logits).astype(jnp.int32)
    return jnp.where(greedy, best, drawn)


def _both_rows(tokens: jax.Array, config: SamplingConfig) -> jax.Array:
    """[m] tokens -> the [b, 1] model input: each pair's token fed to both its rows."""
    if config.guided:
        tokens = jnp.concatenate([tokens, tokens])
    return tokens[:, None]


def prefill(model, prompts: jax.Array, max_len: int) -> tuple[jax.Array, dict]:
    """The prompts [b, p] in one call into a fresh cache of `max_len` slots: (the last
    prompt token's logits [b, vocab], the cache)."""
    cache = model.init_cache(prompts.shape[0], max_len)
    logits, cache = model.decode(prompts, cache, jnp.int32(0))
    return logits[:, -1], cache


def decode_steps(model, cache: dict, logits: jax.Array, start: jax.Array, num_tokens: int,
                 lo: jax.Array, hi: jax.Array, key: jax.Array, config: SamplingConfig,
                 temperature: jax.Array | None = None) -> jax.Array:
    """`num_tokens` tokens [m, num_tokens] at positions start.. from a cache holding the
    positions before `start` and the logits of the token at start - 1 (`temperature`:
    `choose`'s per-row override)."""
    def step(carry, i):
        logits, cache = carry
        position = start + i
        tokens = choose(logits, position, lo, hi, key, config, temperature)
        new_logits, cache = model.decode(_both_rows(tokens, config), cache, position)
        return (new_logits[:, -1], cache), tokens

    # The last token is drawn outside the loop: feeding it would need one more slot and
    # a forward pass whose logits nobody reads.
    (logits, _), tokens = jax.lax.scan(step, (logits, cache), jnp.arange(num_tokens - 1))
    last = choose(logits, start + num_tokens - 1, lo, hi, key, config, temperature)
    return jnp.concatenate([tokens.T, last[:, None]], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_tokens", "config"))
def sample_parts(graphdef, state, prompts: jax.Array, lo: jax.Array, hi: jax.Array,
                 key: jax.Array, temperature: jax.Array | None = None, *, num_tokens: int,
                 config: SamplingConfig) -> jax.Array:
    """The jitted sampler on a split model (`nnx.split(model)`): prompts [b, p] int32,
    allowed ids lo/hi [>= p + num_tokens] per position of the whole sequence, per-row
    temperatures [m] (None: the config's, `sample_temperatures`) -> the new ids
    [m, num_tokens] (m = b, or b / 2 pairs with guidance)."""
    model = nnx.merge(graphdef, state)
    p = prompts.shape[1]
    if num_tokens == 0:
        return jnp.zeros((_rows(prompts.shape[0], config), 0), jnp.int32)
    logits, cache = prefill(model, prompts, p + num_tokens)
    return decode_steps(model, cache, logits, jnp.int32(p), num_tokens, lo, hi, key, config,
                        temperature)


def _check(prompts, num_tokens: int, lo, hi):
    prompts = jnp.asarray(prompts, jnp.int32)
    lo, hi = jnp.asarray(lo, jnp.int32), jnp.asarray(hi, jnp.int32)
    if prompts.ndim != 2 or not prompts.shape[1]:
        raise ValueError(f"prompts must be [batch, length >= 1], got shape {prompts.shape}")
    if lo.shape != hi.shape or lo.shape[0] < prompts.shape[1] + num_tokens:
        raise ValueError(f"lo/hi {lo.shape}/{hi.shape} must cover the {prompts.shape[1]} + "
                         f"{num_tokens} positions of the sequence")
    return prompts, lo, hi


def sample(model, prompts, num_tokens: int, lo, hi, config: SamplingConfig,
           key: jax.Array, *, mesh: Mesh | None = None, data_axis: str = "data") -> jax.Array:
    """`sample_parts` on a module: the new ids [m, num_tokens]. With `mesh`, the batch is
    split over its `data_axis` (rows padded to a multiple of its size, the padding
    dropped from the result) and the weights are replicated: data-parallel generation,
    each device decoding its rows against its own cache. A row's tokens are the same
    either way (its noise depends on its index, not on the batch)."""
    prompts, lo, hi = _check(prompts, num_tokens, lo, hi)
    graphdef, state = nnx.split(model)
    if mesh is None:
        return sample_parts(graphdef, state, prompts, lo, hi, key,
                            sample_temperatures(_rows(prompts.shape[0], config), config),
                            num_tokens=num_tokens, config=config)
    if data_axis not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} have no {data_axis!r} axis to split "
                         f"the batch over")
    rows = _rows(prompts.shape[0], config)
    ways = mesh.shape[data_axis]
    pad = -rows % ways
    if pad:  # whole rows (pairs with guidance) appended, so the real rows keep their index
        halves = [prompts[:rows], prompts[rows:]] if config.guided else [prompts]
        prompts = jnp.concatenate([jnp.concatenate([h, jnp.repeat(h[:1], pad, axis=0)])
                                   for h in halves])
    replicated = NamedSharding(mesh, PartitionSpec())
    prompts = jax.device_put(prompts, NamedSharding(mesh, PartitionSpec(data_axis)))
    temperature = sample_temperatures(rows + pad, config)
    state, lo, hi, key, temperature = jax.device_put((state, lo, hi, key, temperature),
                                                     replicated)
    ids = sample_parts(graphdef, state, prompts, lo, hi, key, temperature,
                       num_tokens=num_tokens, config=config)
    return ids[:rows]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _full_logits(graphdef, state, tokens, last):
    """Logits [b, vocab] of position `last` from a full forward over tokens [b, T]."""
    logits = nnx.merge(graphdef, state)(tokens)
    return jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False)


_choose = jax.jit(choose, static_argnames=("config",))


def sample_uncached(model, prompts, num_tokens: int, lo, hi, config: SamplingConfig,
                    key: jax.Array) -> jax.Array:
    """`sample` by recomputing the whole sequence with `StageLM.__call__` at every step (a
    Python loop). The sequence is padded to its final length so one compiled forward
    serves every step; causal attention keeps the padding out of the logits read."""
    prompts, lo, hi = _check(prompts, num_tokens, lo, hi)
    graphdef, state = nnx.split(model)
    b, p = prompts.shape
    seq = jnp.zeros((b, p + num_tokens), jnp.int32).at[:, :p].set(prompts)
    temperature = sample_temperatures(_rows(b, config), config)
    out = []
    for i in range(num_tokens):
        position = p + i
        logits = _full_logits(graphdef, state, seq, jnp.int32(position - 1))
        tokens = _choose(logits, jnp.int32(position), lo, hi, key, config, temperature)
        seq = seq.at[:, position].set(_both_rows(tokens, config)[:, 0])
        out.append(tokens)
    if not out:
        return jnp.zeros((_rows(b, config), 0), jnp.int32)
    return jnp.stack(out, axis=1)


def _with_prefix(layout: StageLayout, example: dict, prefix_frames: int) -> dict:
    """`example` with the target's levels MISSING from frame `prefix_frames` on, so that
    encoding it gives the conditioning, the target's BOS and exactly the prefix. The other
    levels of the target's stream stay: stage 3 reads its coarse conditioning from the same
    `acoustic` array as its fine target."""
    seg = layout.target
    if seg.stream not in example:
        raise ValueError(f"stage {layout.name!r}: a target prefix of {prefix_frames} frames needs "
                         f"the example's {seg.stream!r}")
    codes = np.array(example[seg.stream], dtype=np.int64)  # a copy: the caller's stays
    if len(codes) < prefix_frames:
        raise ValueError(f"stage {layout.name!r}: a prefix of {prefix_frames} frames, the "
                         f"example's {seg.stream!r} has {len(codes)}")
    if seg.stream == "semantic":
        codes = codes[:prefix_frames]
    else:
        codes[prefix_frames:, seg.first_level:seg.first_level + seg.num_levels] = MISSING
    return dict(example, **{seg.stream: codes})


def stage_prompts(layout: StageLayout, examples: Sequence[dict], config: SamplingConfig,
                  prefix_frames: int = 0) -> np.ndarray:
    """The sampler's batch: conditional prompts, then (with guidance) the null ones. With
    `prefix_frames`, each prompt goes on with the first frames of the example's target (a
    sliding window's carried overlap), encoded by the layout as in training."""
    if not prefix_frames:
        rows = [layout.prompt(e) for e in examples]
        if config.guided:
            rows += [layout.prompt(e, drop_conditioning=True) for e in examples]
        return np.stack(rows).astype(np.int32)
    if layout.target.pattern != "frame_major":
        raise ValueError(f"stage {layout.name!r}: a target prefix needs the frame-major "
                         f"pattern, not {layout.target.pattern!r}")
    length = layout.prompt_length + layout.target.num_tokens(prefix_frames)
    drops = [False] * len(examples) + ([True] * len(examples) if config.guided else [])
    rows = []
    for e, drop in zip(list(examples) * (2 if config.guided else 1), drops):
        ids = layout.encode(_with_prefix(layout, e, prefix_frames),
                            drop_conditioning=drop)["decoder_target_tokens"]
        if len(ids) != length:  # a prefix frame was MISSING: it would shorten the prompt
            raise ValueError(f"stage {layout.name!r}: the target prefix must hold "
                             f"{prefix_frames} whole frames of codes")
        rows.append(ids)
    return np.stack(rows).astype(np.int32)


def generate_stage(loaded_or_module: Any, layout: StageLayout, examples: Sequence[dict],
                   target_frames: int | None, config: SamplingConfig,
                   key: jax.Array, *, prefix_frames: int = 0,
                   mesh: Mesh | None = None) -> np.ndarray:
    """Samples the target of `layout` for each example: numpy codes in the target
    stream's shape per example ([b, frames, levels]; [b, frames] for semantic), as
    `layout.decode` reads them back from the full sequences. With `prefix_frames`, the
    first frames of each example's target are given (prefilled after the target's BOS)
    and come back verbatim; only the frames after them are sampled. With `mesh`, the
    examples are split over its data axis (`sample`)."""
    model = loaded_or_module.module() if hasattr(loaded_or_module, "module") else loaded_or_module
    frames = layout.target.frames if target_frames is None else int(target_frames)
    if not 0 <= prefix_frames <= frames:
        raise ValueError(f"stage {layout.name!r}: prefix_frames={prefix_frames} outside "
                         f"[0, target_frames={frames}]")
    prompts = stage_prompts(layout, examples, config, prefix_frames)
    prefix_tokens = layout.target.num_tokens(prefix_frames)
    if prompts.shape[1] != layout.prompt_length + prefix_tokens:  # BOS ends the prompt
        raise AssertionError(f"prompt of {prompts.shape[1]} tokens, layout says "
                             f"{layout.prompt_length} + {prefix_tokens}")
    lo, hi = layout.allowed_ranges(target_frames=target_frames)  # validates target_frames
    num_tokens = layout.target.num_tokens(frames) - prefix_tokens  # frame-major
    assert len(lo) == prompts.shape[1] + num_tokens
    ids = np.asarray(sample(model, prompts, num_tokens, lo, hi, config, key, mesh=mesh))
    full = np.concatenate([prompts[:len(examples)], ids], axis=1)
    return np.stack([layout.decode(row)[layout.target.name] for row in full])
