"""Trained models back from their MODEL_DIR alone, with no global gin state touched.

Every run writes `MODEL_DIR/model_config.json` beside `config.gin` (as AudioCraft stores
its config in every checkpoint): the task class, its family, the sub-tree of the state that
holds the inference model, and the config dataclasses that model needs, each as
`{"__class__": "module.Name", field: value, ...}`. `load(model_dir)` imports the task
class named there, rebuilds the configs (every field passed explicitly, so gin bindings in
the process cannot leak in), builds the inference model from shapes and restores its
parameters and model state (e.g. codebooks) partially from the orbax checkpoint onto one
local device, whatever mesh trained it; optimizer states and other players stay on disk.
So one process can hold any number of trained models side by side (the sampler holds six).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Mapping

import jax

MODEL_CONFIG = "model_config.json"
FORMAT = 1


class CheckpointNotFoundError(FileNotFoundError):
    """The directory is not a training run (or one of its step directories)."""


class WrongFamilyError(ValueError):
    """The run is of another model family than the caller needs."""


# -- dataclass configs <-> JSON -------------------------------------------------------------
def config_to_json(value: Any) -> Any:
    """Frozen config dataclasses (nested, with tuples) as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        out = {"__class__": f"{cls.__module__}.{cls.__qualname__}"}
        out.update({f.name: config_to_json(getattr(value, f.name))
                    for f in dataclasses.fields(value) if f.init})
        return out
    if isinstance(value, (list, tuple)):
        return [config_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): config_to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in {MODEL_CONFIG}: model "
                    f"configs must be dataclasses of plain values")


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def config_from_json(value: Any) -> Any:
    """The inverse of `config_to_json`: lists become tuples (configs are frozen)."""
    if isinstance(value, dict) and "__class__" in value:
        cls = _import(value["__class__"])
        given = {k: config_from_json(v) for k, v in value.items() if k != "__class__"}
        # Every field explicitly: a field this file lacks takes the dataclass default, never
        # a gin binding of the current process.
        kwargs = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.name in given:
                kwargs[f.name] = given[f.name]
            elif f.default is not dataclasses.MISSING:
                kwargs[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                kwargs[f.name] = f.default_factory()
        return cls(**kwargs)
    if isinstance(value, list):
        return tuple(config_from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: config_from_json(v) for k, v in value.items()}
    return value


def write_model_config(model_dir: str, task) -> str | None:
    """Writes MODEL_DIR/model_config.json for `task` (process 0 only)."""
    if jax.process_index() != 0:
        return None
    cls = type(task)
    record = {"format": FORMAT, "family": cls.family,
              "task": f"{cls.__module__}.{cls.__qualname__}",
              "inference_path": cls.inference_path,
              "configs": {k: config_to_json(v) for k, v in task.model_configs().items()}}
    from mufm.train.checkpoint import run_path

    directory = run_path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_CONFIG  # rewritten at every start, so a torn write heals
    path.write_text(json.dumps(record, indent=1, sort_keys=True))
    return str(path)


# -- finding a run and a step ---------------------------------------------------------------
def committed_steps(model_dir: str) -> list[int]:
    """The steps of a MODEL_DIR whose checkpoint was committed (its state written whole),
    ascending; [] when there are none yet."""
    ckpts = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(ckpts):
        return []
    return sorted(int(d) for d in os.listdir(ckpts)
                  if d.isdigit() and os.path.exists(os.path.join(ckpts, d, "state")))


def resolve(checkpoint_dir: str, step: int | None = None, family: str | None = None
            ) -> tuple[str, int]:
    """(model_dir, step) for a MODEL_DIR (newest committed step unless `step`) or for one of
    its `checkpoints/<step>` directories. `family` only words the error."""
    path = os.path.abspath(os.path.expanduser(checkpoint_dir))
    if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
        path, step = os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
    ckpts = os.path.join(path, "checkpoints")
    if not os.path.isfile(os.path.join(path, MODEL_CONFIG)) or not os.path.isdir(ckpts):
        raise CheckpointNotFoundError(
            f"{checkpoint_dir}: not a {family + ' ' if family else ''}training run (expected "
            f"{MODEL_CONFIG} and checkpoints/ "
            f"written by `python -m mufm.train`)")
    committed = committed_steps(path)
    if step is None:
        if not committed:
            raise CheckpointNotFoundError(f"{checkpoint_dir}: no committed checkpoint in {ckpts}")
        return path, committed[-1]
    if step not in committed:
        raise CheckpointNotFoundError(f"{checkpoint_dir}: no checkpoint for step {step} "
                                      f"(have {committed})")
    return path, step


def read_model_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, MODEL_CONFIG)) as f:
        record = json.load(f)
    if record.get("format") != FORMAT:
        raise CheckpointNotFoundError(f"{model_dir}: {MODEL_CONFIG} format {record.get('format')}, "
                                      f"this code reads format {FORMAT}")
    return record


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained inference model: `module()` merges a fresh nnx module over the arrays."""
    family: str
    task_class: type
    configs: Mapping[str, Any]
    graphdef: Any
    params: Any  # nnx.State of the nnx.Param variables
    model_state: Any  # nnx.State of the other variables (empty for the stage LM)
    step: int
    model_dir: str

    @property
    def parts(self) -> tuple[Any, Any, Any]:
        return self.graphdef, self.params, self.model_state

    def module(self):
        from flax import nnx

        return nnx.merge(self.graphdef, self.params, self.model_state)


def load(checkpoint_dir: str, step: int | None = None, *, family: str | None = None,
         device: jax.Device | None = None) -> LoadedModel:
    """The inference model of the run at `checkpoint_dir` (newest step unless `step`), on
    `device` (default: this process's first device). `family` checks the run's kind."""
    import orbax.checkpoint as ocp
    from flax import nnx

    model_dir, step = resolve(checkpoint_dir, step, family)
    record = read_model_config(model_dir)
    if family is not None and record["family"] != family:
        raise WrongFamilyError(f"{checkpoint_dir}: a {record['family']!r} run, not a {family!r} run")
    task_class = _import(record["task"])
    configs = {k: config_from_json(v) for k, v in record["configs"].items()}
    abstract = nnx.eval_shape(lambda: task_class.inference_model(configs, nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    as_target = lambda tree: jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding), nnx.to_pure_dict(tree))
    sub = record["inference_path"]
    wrap = (lambda t: {sub: t}) if sub else (lambda t: t)
    target = {"params": wrap(as_target(params))}
    has_state = bool(jax.tree.leaves(nnx.to_pure_dict(rest)))
    if has_state:
        target["model_state"] = wrap(as_target(rest))
    path = os.path.join(model_dir, "checkpoints", str(step), "state")
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    unwrap = (lambda t: t[sub]) if sub else (lambda t: t)
    params_state = nnx.State(params)
    nnx.replace_by_pure_dict(params_state, unwrap(restored["params"]))
    rest_state = nnx.State(rest)
    if has_state:
        nnx.replace_by_pure_dict(rest_state, unwrap(restored["model_state"]))
    return LoadedModel(family=record["family"], task_class=task_class, configs=configs,
                       graphdef=graphdef, params=params_state, model_state=rest_state, step=step,
                       model_dir=model_dir)
