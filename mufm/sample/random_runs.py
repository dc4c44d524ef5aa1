"""Run directories of the whole cascade holding random weights: every shape and every file
`Cascade.load` reads, without training anything. What the weights are does not matter to
the cascade's tests (shapes and determinism do) nor to its latency and throughput
benchmarks (`python -m mufm.bench.serve --random_runs=cpu`), so both use these.

    from mufm.sample.random_runs import TINY, write_cascade
    dirs = write_cascade("/tmp/runs", TINY)      # {role: run dir}, Cascade.load's arguments

Two recipes: TINY (configs/experiments/*_tiny.gin: MuLan 3 levels x 16, semantic windows
of 50 frames, a 4 x 64 codec, 8 semantic clusters) and CPU (the shapes of the CPU
experiments that configs/generate/cpu.gin names)."""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

STAGE_ROLES = ("semantic", "coarse", "fine")


@dataclasses.dataclass(frozen=True)
class Recipe:
    mulan: str
    stages: dict  # role -> (gin file, extra bindings)
    codec: str
    semantic: str
    mulan_levels: int
    mulan_codes: int
    semantic_clusters: int


TINY = Recipe(
    mulan="experiments/mulan_corpus_tiny.gin",
    stages={
        "semantic": ("experiments/stage_tiny.gin", ()),
        "coarse": ("experiments/stage_tiny.gin",
                   ("STAGE_TASK='mufm_tokens_coarse'",
                    "TokenTaskRegistration.layout=@coarse_stage()")),
        "fine": ("experiments/stage_tiny.gin",
                 ("STAGE_TASK='mufm_tokens_fine'", "TokenTaskRegistration.layout=@fine_stage()",
                  "TokenTaskRegistration.conditioning_dropout=0.0")),
    },
    codec="experiments/codec_synthetic_tiny.gin",
    semantic="experiments/semantic_synthetic_tiny.gin",
    mulan_levels=3, mulan_codes=16, semantic_clusters=8)

CPU = Recipe(
    mulan="experiments/mulan_corpus_cpu.gin",
    stages={role: (f"experiments/stage_{role}_corpus_cpu.gin", ()) for role in STAGE_ROLES},
    codec="experiments/codec_corpus_cpu.gin",
    semantic="experiments/semantic_corpus_cpu.gin",
    mulan_levels=12, mulan_codes=1024, semantic_clusters=1024)

RECIPES = {"tiny": TINY, "cpu": CPU}


def _parsed(gin_file: str, model_dir: str, bindings, fn):
    """fn() evaluated under `gin_file` (+ bindings), the config cleared after."""
    import gin

    from mufm.gin_flags import parse

    parse([gin_file], [f'MODEL_DIR="{model_dir}"', "TRAIN_STEPS=1", *bindings])
    try:
        return fn()
    finally:
        gin.clear_config()


def write_run(gin_file: str, model_dir: str, step: int, bindings=(),
              mark_codebooks: bool = False) -> str:
    """A run directory `mufm.train.restore.load` reads, holding the inference model alone
    with small random weights at `step`. Initialising the whole train state through the
    trainer (discriminators and optimizers too) costs ~20 s of compiling for the codec on
    a busy CPU; the loader only ever reads the inference sub-tree, so that is all this
    writes. `mark_codebooks`: the codec's random codebooks marked initialised (any codebook
    decodes codes to finite audio)."""
    import gin
    from flax import nnx

    from mufm.train.checkpoint import CheckpointConfig, Checkpointer
    from mufm.train.restore import write_model_config

    task = _parsed(gin_file, model_dir, bindings,
                   lambda: gin.query_parameter("train.task").scoped_configurable_fn())
    # Shapes only, then numpy noise: initialising the codec and MuLan op by op (or jitted)
    # costs ~10 s each on a busy CPU.
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


def semantic_tokenizer_run(gin_file: str, model_dir: str, clusters: int) -> str:
    """A semantic run with random weights and a k-means of `clusters` random centroids over
    its default layer."""
    from mufm.layers.kmeans import KMeansState
    from mufm.semantic.model import SemanticConfig
    from mufm.semantic.tokens import TOKENS_DIR, default_layer, save_centroids

    write_run(gin_file, model_dir, 0)
    cfg = _parsed(gin_file, model_dir, (), SemanticConfig)
    rng = np.random.default_rng(1)
    d = cfg.d_model
    state = KMeansState(centroids=rng.standard_normal((clusters, d)).astype(np.float32),
                        counts=np.ones(clusters, np.float32), mean=np.zeros(d, np.float32),
                        std=np.ones(d, np.float32), step=np.zeros((), np.int32))
    save_centroids(os.path.join(model_dir, TOKENS_DIR), state,
                   {"step": 0, "d_model": d, "layer": default_layer(cfg)})
    return model_dir


def write_cascade(root: str, recipe: Recipe = TINY) -> dict[str, str]:
    """{role: run dir} under `root`: mulan (with fitted tokens), semantic, coarse, fine,
    codec and semantic_tokenizer."""
    from mufm.mulan.model import MuLanConfig
    from mufm.mulan.tokens import MuLanTokens

    out = {"codec": write_run(recipe.codec, os.path.join(root, "codec"), 1, mark_codebooks=True),
           "mulan": write_run(recipe.mulan, os.path.join(root, "mulan"), 0)}
    dim = _parsed(recipe.mulan, out["mulan"], (), lambda: MuLanConfig().joint_dim)
    # More embeddings than codes, so no level's k-means repeats points.
    emb = np.random.default_rng(0).standard_normal((max(64, 2 * recipe.mulan_codes), dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    MuLanTokens.fit(emb, num_levels=recipe.mulan_levels, codebook_size=recipe.mulan_codes
                    ).save(os.path.join(out["mulan"], "mulan_tokens"))
    for role in STAGE_ROLES:
        gin_file, bindings = recipe.stages[role]
        out[role] = write_run(gin_file, os.path.join(root, role), 0,
                              bindings=['TOKENS_DIR="/nonexistent"', *bindings])
    out["semantic_tokenizer"] = semantic_tokenizer_run(
        recipe.semantic, os.path.join(root, "semantic_tokenizer"), recipe.semantic_clusters)
    return out
