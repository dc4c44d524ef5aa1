"""Fixtures of the semantic-token tests: the tiny rendered corpus (the builder CLI of
tests/data), and run directories of a tiny semantic model and a tiny codec written by
the trainer's own pieces (`build_program`, `Checkpointer`, `write_model_config`) from
their initial state, so `mufm.train.restore.load` reads them like any run. Training
them through `python -m mufm.train` costs ~1 minute each on 2 busy cores and their
weights do not matter to these tests; the codec's codebooks do, so its generator runs
one training-mode forward pass (the real k-means initialisation of every RVQ level)."""
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "data"))
from conftest import needs_fluidsynth, run_build  # noqa: E402  (tests/data/conftest.py)

sys.path.pop(0)

SEMANTIC_GIN = "experiments/semantic_synthetic_tiny.gin"
CODEC_GIN = "experiments/codec_synthetic_tiny.gin"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A corpus built by the CLI: 2 Aird's airs + 4 Bach chorales, 2 variants each (train
    4 works / 8 clips, validation 1 / 2, test 1 / 2)."""
    needs_fluidsynth()
    out = str(tmp_path_factory.mktemp("corpus") / "tiny")
    run_build(out)
    return out


def _task(gin_file: str, model_dir: str):
    import gin

    from mufm.gin_flags import parse
    from mufm.train.loop import RunConfig

    parse([gin_file], [f'MODEL_DIR="{model_dir}"', "TRAIN_STEPS=1"])
    try:
        task = gin.query_parameter("train.task").scoped_configurable_fn()
        run = RunConfig(model_dir=model_dir, train_steps=1)
    finally:
        gin.clear_config()
    return task, run


def write_train_state_run(gin_file: str, model_dir: str, step: int, prepare=None) -> str:
    """A run directory at `step` holding the initial state (after `prepare(program, state)`),
    built by the trainer itself (mufm.sample.random_runs.write_run writes the same files
    from the model alone)."""
    from mufm.parallel.logical import sharding_context
    from mufm.parallel.mesh import MeshConfig
    from mufm.train.checkpoint import CheckpointConfig, Checkpointer
    from mufm.train.loop import build_program
    from mufm.train.restore import write_model_config

    task, run = _task(gin_file, model_dir)
    program = build_program(task, MeshConfig(), run, devices=jax.devices()[:1])
    with sharding_context(program.mesh, program.rules):
        state = program.initialize(0)
        if prepare is not None:
            state = prepare(program, state)
    write_model_config(model_dir, task)
    ckpt = Checkpointer(model_dir, CheckpointConfig(save_every=1, async_save=False))
    ckpt.save(step, state, {}, force=True)
    ckpt.close()
    return model_dir


def _initialise_codebooks(program, state):
    from flax import nnx

    from mufm.train.state import merge_model

    generator = merge_model(program.spec, state.params, state.model_state).generator
    graphdef, params, rest = nnx.split(generator, nnx.Param, ...)

    @jax.jit
    def forward(params, rest, wave, key):
        g = nnx.merge(graphdef, params, rest)
        g(wave, train=True, key=key)
        return nnx.to_pure_dict(nnx.split(g, nnx.Param, ...)[2])

    t = np.arange(24_000) / 24_000
    rng = np.random.default_rng(0)
    wave = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000, (8, 1)) * t)
            + 0.05 * rng.standard_normal((8, len(t)))).astype(np.float32)
    codebooks = forward(params, rest, wave, jax.random.key(0))
    return state.replace(model_state=dict(state.model_state, generator=codebooks))


@pytest.fixture(scope="session")
def semantic_run(tmp_path_factory):
    """The tiny semantic model (41k params, 1 + 1 conformer blocks, 1.2 s training crops)."""
    return write_train_state_run(SEMANTIC_GIN, str(tmp_path_factory.mktemp("runs") / "semantic"),
                                 0)


@pytest.fixture(scope="session")
def codec_run(tmp_path_factory):
    """The tiny codec (4 RVQ levels x 64 codes, 50 Hz), codebooks initialised."""
    return write_train_state_run(CODEC_GIN, str(tmp_path_factory.mktemp("runs") / "codec"), 1,
                                 _initialise_codebooks)


FIT = dict(num_clusters=8, max_frames=2400, minibatch_frames=512, epochs=2, seed=0)


@pytest.fixture(scope="session")
def fitted(semantic_run, tiny_corpus):
    """(fit, tokens dir) of the tiny run's k-means, K = 8, on 2400 random train frames."""
    from mufm.semantic.tokens import FitConfig, fit_tokens

    return fit_tokens(semantic_run, tiny_corpus, FitConfig(**FIT), progress=False,
                      log=lambda _: None)
