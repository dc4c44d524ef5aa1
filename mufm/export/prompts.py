"""A stage's sampler prompt from traced codes: `StageLayout.encode` rebuilt in jnp for the
frame-major segments the cascade samples, so the exported program can build each window's
prompt inside the graph. Tested equal to `sample.decode.stage_prompts` (the host-side
encoder the cascade uses) on every stage of the tiny cascade."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mufm.lm.layouts import EMPTY, FIRST_BOS, NULL, StageLayout
from mufm.sample.decode import SamplingConfig


def _segment(layout: StageLayout, k: int, cells: jax.Array, drop: bool) -> jax.Array:
    """Segment k's BOS and ids [b, 1 + frames x levels] from codes [b, present, levels]
    (MISSING < 0 where absent); a conditioning segment is padded with EMPTY to its frames."""
    seg = layout.segments[k]
    if seg.pattern != "frame_major":
        raise ValueError(f"stage {layout.name!r}, segment {seg.name!r}: the exported sampler "
                         f"builds frame-major prompts only, not {seg.pattern!r}")
    b, present, levels = cells.shape
    if levels != seg.num_levels:
        raise ValueError(f"stage {layout.name!r}, segment {seg.name!r}: {levels} levels given, "
                         f"the layout has {seg.num_levels}")
    is_target = k == len(layout.segments) - 1
    frames = present if is_target else seg.frames
    if present > frames:
        raise ValueError(f"stage {layout.name!r}, segment {seg.name!r}: {present} frames, the "
                         f"layout holds {frames}")
    offsets = jnp.asarray(layout._offsets(k), jnp.int32)
    ids = jnp.where(cells >= 0, cells.astype(jnp.int32) + offsets, EMPTY)
    ids = jnp.pad(ids, ((0, 0), (0, frames - present), (0, 0)), constant_values=EMPTY)
    ids = ids.reshape(b, frames * levels)  # frame-major: a frame's levels in order
    if drop and seg.droppable:
        ids = jnp.full_like(ids, NULL)
    bos = jnp.full((b, 1), FIRST_BOS + k, jnp.int32)
    return jnp.concatenate([bos, ids], axis=1)


def stage_prompt(layout: StageLayout, conditioning: list[jax.Array], prefix: jax.Array,
                 config: SamplingConfig) -> jax.Array:
    """The sampler's batch [b (2b with guidance), prompt + prefix tokens] from the
    conditioning segments' codes (each [b, frames, levels]) and the target's given first
    frames `prefix` [b, p, levels]: the conditional rows, then the null rows."""
    if len(conditioning) != len(layout.segments) - 1:
        raise ValueError(f"stage {layout.name!r}: {len(conditioning)} conditioning segments "
                         f"given, the layout has {len(layout.segments) - 1}")
    cells = list(conditioning) + [prefix]

    def rows(drop: bool) -> jax.Array:
        return jnp.concatenate([_segment(layout, k, c, drop) for k, c in enumerate(cells)],
                               axis=1)

    if config.guided:
        return jnp.concatenate([rows(False), rows(True)], axis=0)
    return rows(False)


def new_codes(layout: StageLayout, ids: jax.Array) -> jax.Array:
    """Sampled target ids [m, frames x levels] (every id inside its position's allowed
    range) -> codes [m, frames, levels]."""
    seg = layout.target
    offsets = jnp.asarray(layout._offsets(len(layout.segments) - 1), jnp.int32)
    return ids.reshape(ids.shape[0], -1, seg.num_levels) - offsets
