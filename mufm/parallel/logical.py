"""Logical axis names -> mesh axes.

Model code names the axes of every parameter and activation with logical names
(`batch, length, embed, mlp, heads, kv, vocab, layers, rvq, ...`). The mapping to mesh axes
(`data, fsdp, tensor`) is a list of rules that lives in gin, T5X/MaxText style:

    (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("kv", None), ...)

A logical name may appear in several rules: they are tried in order, and a rule is skipped
when one of its mesh axes is already used by an earlier dimension of the same array (so an
activation `(batch, length, embed)` with batch on fsdp keeps embed replicated while the
`embed` parameter axis is sharded on fsdp).

Parameters are resolved strictly: a logical name without any rule, a rule naming a mesh axis
the mesh does not have, or a dimension the mesh axis does not divide is an error naming the
parameter and the axis. Activations are resolved leniently (an indivisible dimension, e.g. a
decoding batch of 1, is left replicated) because their shapes vary at run time.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]


class ShardingRuleError(ValueError):
    """A logical-axis rule cannot be applied to a named array."""


def normalize_rules(rules: Sequence[Sequence[Any]]) -> Rules:
    """Gin hands rules over as lists; make them hashable tuples and check their shape."""
    out = []
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ShardingRuleError(
                f"logical_axis_rules entry {rule!r} must be (logical_name, mesh_axes)")
        mesh_axes = rule[1]
        if isinstance(mesh_axes, list):
            mesh_axes = tuple(mesh_axes)
        out.append((rule[0], mesh_axes))
    return tuple(out)


def _as_tuple(mesh_axes: MeshAxes) -> tuple[str, ...]:
    if mesh_axes is None:
        return ()
    if isinstance(mesh_axes, str):
        return (mesh_axes,)
    return tuple(mesh_axes)


def logical_to_spec(
    axes: Sequence[str | None],
    rules: Rules,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
    *,
    name: str = "<array>",
    strict: bool = True,
) -> PartitionSpec:
    """Resolves logical axis names to a PartitionSpec over `mesh`'s axes."""
    if shape is not None and len(shape) != len(axes):
        raise ShardingRuleError(
            f"{name}: {len(axes)} logical axes {tuple(axes)} for an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, axis in enumerate(axes):
        if axis is None:
            spec.append(None)
            continue
        candidates = [m for (logical, m) in rules if logical == axis]
        if not candidates:
            if strict:
                raise ShardingRuleError(
                    f"{name}: logical axis {axis!r} has no rule in logical_axis_rules; "
                    f"add ('{axis}', <mesh axis or None>)")
            spec.append(None)
            continue
        chosen: tuple[str, ...] = ()
        for cand in candidates:
            cand_axes = _as_tuple(cand)
            if mesh is not None:
                unknown = [a for a in cand_axes if a not in mesh.shape]
                if unknown:
                    raise ShardingRuleError(
                        f"{name}: rule ('{axis}', {cand!r}) names mesh axis {unknown[0]!r}, "
                        f"but the mesh has axes {tuple(mesh.axis_names)}")
            if any(a in used for a in cand_axes):
                continue
            if mesh is not None and shape is not None:
                size = math.prod(mesh.shape[a] for a in cand_axes)
                if shape[dim] % size:
                    if strict:
                        raise ShardingRuleError(
                            f"{name}: dimension {dim} (logical axis {axis!r}, size {shape[dim]}) "
                            f"is not divisible by mesh axes {cand_axes} of total size {size}")
                    continue
            chosen = cand_axes
            break
        used.update(chosen)
        if not chosen:
            spec.append(None)
        elif len(chosen) == 1:
            spec.append(chosen[0])
        else:
            spec.append(chosen)
    return PartitionSpec(*spec)


@dataclasses.dataclass(frozen=True)
class ShardingContext:
    mesh: Mesh
    rules: Rules


_CONTEXT: contextvars.ContextVar[ShardingContext | None] = contextvars.ContextVar(
    "mufm_sharding_context", default=None)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules) -> Iterator[ShardingContext]:
    """Makes `constrain` active while tracing model code.

    Deliberately not `jax.set_mesh`: NNX would then read the logical names in parameter
    metadata as mesh axes. Constraints carry an explicit NamedSharding instead.
    """
    ctx = ShardingContext(mesh, normalize_rules(rules))
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a sharding context."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    spec = logical_to_spec(axes, ctx.rules, ctx.mesh, x.shape, name="activation", strict=False)
    return jax.lax.with_sharding_constraint(x, NamedSharding(ctx.mesh, spec))


def named_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings for a tree of parameters given matching trees of logical axes and shapes.

    `axes_tree` leaves are tuples of logical names (or None for replicated scalars);
    `shapes_tree` leaves are anything with `.shape`. Errors name the parameter path.
    """
    rules = normalize_rules(rules)

    def one(path, axes, shaped):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if axes is None:
            spec = PartitionSpec()
        else:
            spec = logical_to_spec(axes, rules, mesh, shaped.shape, name=name, strict=True)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        one, axes_tree, shapes_tree, is_leaf=lambda x: x is None or isinstance(x, tuple))
