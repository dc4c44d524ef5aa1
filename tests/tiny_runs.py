"""Tiny runs for the cascade's tests (fixtures `runs` and `cascade` in tests/conftest.py): MuLan 3 levels x 16, the three stage LMs of
configs/experiments/stage_tiny.gin (semantic windows of 50 frames, coarse 25 semantic -> 50
x 2 levels, fine 25 x levels 2..3), the 4 x 64 codec and a semantic tokenizer with 8
k-means clusters, each written with random weights (what they weigh does not matter here,
shapes and determinism do)."""
import os

import jax
import numpy as np

from mufm.sample.cascade import Cascade
from tests.semantic.conftest import CODEC_GIN, SEMANTIC_GIN

MULAN_GIN = "experiments/mulan_corpus_tiny.gin"
STAGE_GIN = "experiments/stage_tiny.gin"
STAGE_BINDINGS = {
    "semantic": [],
    "coarse": ["STAGE_TASK='mufm_tokens_coarse'", "TokenTaskRegistration.layout=@coarse_stage()"],
    "fine": ["STAGE_TASK='mufm_tokens_fine'", "TokenTaskRegistration.layout=@fine_stage()",
             "TokenTaskRegistration.conditioning_dropout=0.0"],
}
SECONDS = 3.0  # 75 semantic frames: 2 semantic, 5 coarse and 11 fine windows
TEXTS = ["a calm piano piece", "fast drums"]


def write_run(gin_file, model_dir, step, bindings=(), mark_codebooks=False):
    """A run directory `mufm.train.restore.load` reads, holding the inference model alone
    with small random weights. tests/semantic/conftest.py's `write_run` initialises the
    whole train state through the trainer (discriminators and optimizers too: ~20 s of
    compiling for the codec on a busy CPU); the loader only ever reads the inference
    sub-tree, so that is all this writes. `mark_codebooks`: the codec's random codebooks
    marked initialised (any codebook decodes codes to finite audio)."""
    import gin
    from flax import nnx

    from mufm.gin_flags import parse
    from mufm.train.checkpoint import CheckpointConfig, Checkpointer
    from mufm.train.restore import write_model_config

    parse([gin_file], [f'MODEL_DIR="{model_dir}"', "TRAIN_STEPS=1", *bindings])
    try:
        task = gin.query_parameter("train.task").scoped_configurable_fn()
    finally:
        gin.clear_config()
    # Shapes only, then numpy noise: initialising the codec and MuLan op by op (or jitted)
    # costs ~10 s each on a busy CPU, and no test here depends on what the weights are.
    abstract = nnx.eval_shape(lambda: type(task).inference_model(task.model_configs(),
                                                                 nnx.Rngs(0)))
    _, params, rest = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(0)
    noise = lambda v: (0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
    params = jax.tree.map(noise, nnx.to_pure_dict(params))
    rest = jax.tree.map(noise, nnx.to_pure_dict(rest))
    if mark_codebooks:
        rest["quantizer"]["initialized"] = np.ones_like(rest["quantizer"]["initialized"])
    sub = type(task).inference_path
    wrap = (lambda t: {sub: t}) if sub else (lambda t: t)
    state = {"params": wrap(params)}
    if jax.tree.leaves(rest):
        state["model_state"] = wrap(rest)
    write_model_config(model_dir, task)
    ckpt = Checkpointer(model_dir, CheckpointConfig(save_every=1, async_save=False))
    ckpt.save(step, state, {}, force=True)
    ckpt.close()
    return model_dir


def semantic_tokenizer_run(model_dir, clusters=8):
    """A semantic run with random weights and a k-means of `clusters` random centroids
    over its default layer (the semantic stage samples 8 codes)."""
    import gin

    from mufm.gin_flags import parse
    from mufm.layers.kmeans import KMeansState
    from mufm.semantic.model import SemanticConfig
    from mufm.semantic.tokens import TOKENS_DIR, default_layer, save_centroids

    write_run(SEMANTIC_GIN, model_dir, 0)
    parse([SEMANTIC_GIN], [f'MODEL_DIR="{model_dir}"', "TRAIN_STEPS=1"])
    try:
        cfg = SemanticConfig()
    finally:
        gin.clear_config()
    rng = np.random.default_rng(1)
    d = cfg.d_model
    state = KMeansState(centroids=rng.standard_normal((clusters, d)).astype(np.float32),
                        counts=np.ones(clusters, np.float32), mean=np.zeros(d, np.float32),
                        std=np.ones(d, np.float32), step=np.zeros((), np.int32))
    save_centroids(os.path.join(model_dir, TOKENS_DIR), state,
                   {"step": 0, "d_model": d, "layer": default_layer(cfg)})
    return model_dir


def load(runs, **changes):
    dirs = dict(runs, **changes)
    return Cascade.load(dirs["mulan"], dirs["semantic"], dirs["coarse"], dirs["fine"], dirs["codec"],
                        semantic_tokenizer=dirs["semantic_tokenizer"])
