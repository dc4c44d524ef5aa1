"""The train state, built from shapes and placed on the mesh without materialising anywhere.

`eval_shape(init)` gives the abstract state; logical axis names on each nnx.Param give
parameter shardings; optimizer-state leaves that mirror a parameter (Adam moments) inherit
its sharding, other leaves (counts, Adafactor's factored statistics) are replicated; then
`jit(init, out_shardings=...)` creates every array directly in its shards.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mufm.parallel.logical import Rules, named_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # pure dict of fp32 arrays, the nnx.Param state of the model
    opt_state: Any
    # Non-trainable model variables (e.g. EMA codebooks); empty for the stage LMs.
    model_state: Any
    nonfinite_skipped: jax.Array  # total updates skipped for a non-finite loss / gradient
    nonfinite_streak: jax.Array  # consecutive skips up to now

    def advance(self, ok: jax.Array, **updates) -> "TrainState":
        """The next step's state: `updates` (params=..., opt_state=..., model_state=...) taken
        where `ok` (a finite loss and gradients), else the old values kept and the skip
        counters raised. Every trainer's step ends here."""
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        return self.replace(
            step=self.step + 1,
            **{name: keep(new, getattr(self, name)) for name, new in updates.items()},
            nonfinite_skipped=self.nonfinite_skipped + (~ok).astype(jnp.int32),
            nonfinite_streak=jnp.where(ok, 0, self.nonfinite_streak + 1))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the step needs to rebuild the module: graph definition and param metadata."""
    graphdef: Any
    param_axes: Any  # pure dict of logical-axis tuples, same structure as params


def model_spec(make_model: Callable[[nnx.Rngs], nnx.Module]) -> ModelSpec:
    abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
    graphdef, params, _ = nnx.split(abstract, nnx.Param, ...)
    variables = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    structure = jax.tree.structure(nnx.to_pure_dict(params))
    axes = jax.tree.unflatten(structure, [v.get_metadata().get("out_sharding") for v in variables])
    return ModelSpec(graphdef=graphdef, param_axes=axes)


def merge_model(spec: ModelSpec, params: Any, model_state: Any = None) -> nnx.Module:
    states = [params, model_state] if model_state else [params]
    return nnx.merge(spec.graphdef, *states)


def init_fn(make_model, tx: optax.GradientTransformation):
    def init(key: jax.Array) -> TrainState:
        model = make_model(nnx.Rngs(params=key))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        rest = nnx.to_pure_dict(rest) if rest else {}
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=params, opt_state=tx.init(params), model_state=rest,
                          nonfinite_skipped=zero, nonfinite_streak=zero)
    return init


def _key_tuple(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def state_shardings(abstract: TrainState, spec: ModelSpec, mesh: Mesh, rules: Rules) -> TrainState:
    replicated = NamedSharding(mesh, PartitionSpec())
    param_sh = named_shardings(spec.param_axes, abstract.params, mesh, rules)
    by_path = {_key_tuple(path): (sh, leaf.shape) for (path, leaf), sh in
               zip(jax.tree_util.tree_leaves_with_path(abstract.params), jax.tree.leaves(param_sh))}

    def opt_leaf(path, leaf):
        keys = _key_tuple(path)
        # Optimizer states embed the params tree: a leaf whose path ends with a parameter's
        # path and has its shape is that parameter's moment.
        for n in range(len(keys)):
            hit = by_path.get(keys[n:])
            if hit is not None and hit[1] == leaf.shape:
                return hit[0]
        return replicated

    opt_sh = jax.tree_util.tree_map_with_path(opt_leaf, abstract.opt_state)
    model_sh = jax.tree.map(lambda _: replicated, abstract.model_state)
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, model_state=model_sh,
                      nonfinite_skipped=replicated, nonfinite_streak=replicated)


def abstract_state(make_model, tx, mesh: Mesh, rules: Rules, seed: int = 0
                   ) -> tuple[TrainState, TrainState, ModelSpec]:
    """Shapes + shardings only (checkpoint restore targets, AOT compilation)."""
    spec = model_spec(make_model)
    abstract = jax.eval_shape(init_fn(make_model, tx), jax.random.key(seed))
    shardings = state_shardings(abstract, spec, mesh, rules)
    with_sh = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                           abstract, shardings)
    return with_sh, shardings, spec


def initialize(make_model, tx, shardings: TrainState, seed: int) -> TrainState:
    """A fresh state, every array created in place in its shards."""
    return jax.jit(init_fn(make_model, tx), out_shardings=shardings)(jax.random.key(seed))


def create_train_state(make_model, tx, mesh: Mesh, rules: Rules, seed: int
                       ) -> tuple[TrainState, TrainState, ModelSpec]:
    """(state, its shardings, model spec), every array created in place on the mesh."""
    _, shardings, spec = abstract_state(make_model, tx, mesh, rules, seed)
    return initialize(make_model, tx, shardings, seed), shardings, spec
