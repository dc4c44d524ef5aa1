"""The task protocol: what a model family tells the generic trainer.

A task is a frozen, gin-configurable dataclass that owns its grouped configs (model, data,
optimizer(s), losses) and knows, in the spirit of T5X's model objects and AudioCraft's
solvers:

- its model (`make_model`) and optimizer(s) with their schedules (`make_optimizer`);
- its jitted programs: `train_steps` (one or more pure `(state, batch) -> (state, metrics)`
  functions, and `step_name(i)` picks the one that trains step i, so the codec's warm-up
  is just another step) and `eval_programs` (`(state, batch) -> outputs`);
- its batches: `batch_spec` (global shapes, for AOT compilation) and `train_batches`
  (host-local numpy batches from a start position, deterministic for resume);
- parameters that come from outside the run (`pretrained_params`, e.g. MuLan's MiniLM text
  encoder), placed into the sharded state when a run starts from scratch;
- its throughput units and model FLOPs per step, and which metrics the progress bar shows;
- its evaluation (`evaluate`: scalars and audio summaries);
- how a trained model is rebuilt without gin (`model_configs`, `inference_model`,
  `inference_path`), used by `mufm.train.restore`.

`mufm.train.loop.train(task, checkpoint, mesh, run)` and `build_program(...)` run any task;
`mufm.train.compile_check` compiles every program a task declares. A family adds a folder
with its model and a `Task` subclass, a `runs/<family>.gin` binding `train.task`, and
experiments (README: "Adding a model family").
"""
from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping

import jax
import numpy as np
import optax

from mufm.audio import SAMPLE_RATE
from mufm.data.pipeline import DataConfig

if TYPE_CHECKING:  # the loop imports this module; only annotations go the other way
    from flax import nnx

    from mufm.train.loop import Program, RunConfig
    from mufm.train.state import ModelSpec, TrainState

StepFn = Callable[[Any, dict], tuple[Any, dict]]
EvalFn = Callable[[Any, dict], Any]


@dataclasses.dataclass(frozen=True)
class Optimizers:
    """The one optax transformation the state carries (for several players, a
    `mufm.train.optim.per_group` of them, which updates only the groups a step has
    gradients for) and the learning-rate schedule of each player."""
    tx: optax.GradientTransformation
    schedules: Mapping[str, optax.Schedule]


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a task's step and eval functions close over: no arrays, only structure."""
    spec: "ModelSpec"
    optimizers: Optimizers
    seed: int


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What `Task.evaluate` returns: scalars (written as eval/<name>) and audio summaries
    ({tag: [clips, samples]} at `sample_rate`)."""
    scalars: Mapping[str, float]
    audios: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    sample_rate: int = SAMPLE_RATE


class Task(abc.ABC):
    """Base of every family's task. Subclasses are frozen dataclasses with a `data` field."""

    family: ClassVar[str]  # "lm", "codec", ...: names the run in its model_config.json
    # The sub-tree of params / model_state that holds the inference model (the codec's
    # "generator"; None: the whole tree, as for the stage LM).
    inference_path: ClassVar[str | None] = None
    progress_metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy")

    data: DataConfig

    # -- configuration ----------------------------------------------------------------
    def validate(self, run: "RunConfig") -> None:
        """Raises GinConfigError for combinations the task cannot train, before any compute."""

    # -- model and optimizers ----------------------------------------------------------
    @abc.abstractmethod
    def make_model(self, rngs: "nnx.Rngs") -> "nnx.Module":
        """The whole trainable module (for a GAN both players)."""

    @abc.abstractmethod
    def make_optimizer(self, train_steps: int) -> Optimizers:
        ...

    def pretrained_params(self) -> Mapping[tuple[str, ...], np.ndarray]:
        """Host arrays that replace freshly initialised parameters, keyed by their path in
        the params tree (`("text", "encoder", "layers", "0", "wi", "kernel")`, keys as
        strings). The trainer places each into its parameter's sharding after initialising
        (`mufm.train.loop.place_params`); a restored checkpoint already holds them, so this
        is only called for a run that starts from scratch. Default: none."""
        return {}

    # -- programs ----------------------------------------------------------------------
    @abc.abstractmethod
    def train_steps(self, ctx: StepContext) -> dict[str, StepFn]:
        """Named pure train steps; the trainer jits and donates each."""

    def step_name(self, step: int) -> str:
        """Which of `train_steps` trains step `step` (0-based)."""
        return "train"

    def eval_programs(self, ctx: StepContext) -> dict[str, EvalFn]:
        """Named pure eval programs of (state, batch), batch shaped like `batch_spec`."""
        return {}

    # -- data --------------------------------------------------------------------------
    @abc.abstractmethod
    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch every program receives, as shapes (no data read)."""

    @abc.abstractmethod
    def train_batches(self, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
        """Host-local training batches, positioned at `start_batch` (deterministic)."""

    # -- throughput --------------------------------------------------------------------
    def units_per_step(self) -> dict[str, float]:
        """Throughput units of one global batch, e.g. {"tokens": 8192} or {"audio_s": 8.0}."""
        return {}

    def flops_per_step(self) -> float:
        """Analytic model FLOPs of one training step (0: not reported)."""
        return 0.0

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self, program: "Program", state: "TrainState", num_batches: int) -> Evaluation:
        return Evaluation(scalars={})

    # -- loading without gin ------------------------------------------------------------
    @abc.abstractmethod
    def model_configs(self) -> dict[str, Any]:
        """The config dataclasses `inference_model` needs, stored as JSON with the run."""

    @classmethod
    @abc.abstractmethod
    def inference_model(cls, configs: Mapping[str, Any], rngs: "nnx.Rngs") -> "nnx.Module":
        """The module at `inference_path` of a trained run, built from `model_configs`."""
