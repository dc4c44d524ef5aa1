"""Train-step throughput of a stage LM config against this machine's matmul peak.

    python -m mufm.bench.train_step --config base [--steps 3] [--batch 8] [--seq 1024]

Model FLOPs per step = tokens x (6 x N_matmul + 12 x layers x seq x heads x head_dim)
(mufm.lm.model.train_flops_per_token: every matmul of forward and backward, attention
scores and weighted sums included, no remat recompute). The yardstick is a jitted 2048^3
fp32 matmul timed in the same process, before and after the step timing (the mean of the
two is used, so a change in machine load during the run shows up as a spread).
The batch is random tokens: this measures the step, not the input pipeline.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mufm import gin_flags
from mufm.bench.matmul_peak import matmul_flops_per_s
from mufm.bench.task_step import timed_steps
from mufm.data.pipeline import DataConfig
from mufm.lm.model import LMConfig, param_count, train_flops_per_token
from mufm.lm.task import LMTask
from mufm.parallel.logical import sharding_context
from mufm.parallel.mesh import MeshConfig
from mufm.train.loop import RunConfig, build_program
from mufm.train.optim import OptimizerConfig
from mufm.train.state import merge_model

DEFAULT_SHAPES = {"tiny": (16, 128), "small": (8, 512), "base": (8, 1024), "musiclm": (1, 1024)}


def load_model_config(name: str, overrides=()) -> LMConfig:
    import gin

    gin_flags.parse([f"models/{name}.gin"], list(overrides), finalize=False)
    cfg = LMConfig()
    gin.clear_config()
    return cfg


def random_batch(batch: int, seq: int, vocab: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    targets = rng.integers(2, vocab, (batch, seq)).astype(np.int32)
    inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"decoder_input_tokens": jnp.asarray(inputs), "decoder_target_tokens": jnp.asarray(targets),
            "decoder_loss_weights": jnp.ones((batch, seq), jnp.int32)}


def time_steps(step, state, batch, steps: int) -> tuple[float, object]:
    times, state = timed_steps(step, state, batch, steps)
    return float(np.median(times)), state


def attention_core_seconds(batch: int, seq: int, cfg: LMConfig, reps: int) -> tuple[float, float]:
    """(forward, forward+backward) time of one layer's attention core (scores, causal
    softmax, weighted sum; query blocks as configured) at the step's shapes."""
    from mufm.layers.attention import NEG_INF, attention_core

    shape = (batch, seq, cfg.num_heads, cfg.kv_dim)
    q, k, v = (jax.random.normal(jax.random.key(i), shape, cfg.compute_dtype) for i in range(3))
    idx = jnp.arange(seq)
    bias = jnp.where(idx[:, None] >= idx[None, :], 0.0, NEG_INF)[None, None]
    core = jax.jit(lambda q, k, v: attention_core(q, k, v, bias, query_block=cfg.attention_query_block))
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(core(q, k, v)), argnums=(0, 1, 2)))
    out = []
    for fn in (core, grad):
        jax.block_until_ready(fn(q, k, v))
        t = time.perf_counter()
        for _ in range(reps):
            jax.block_until_ready(fn(q, k, v))
        out.append((time.perf_counter() - t) / reps)
    return out[0], out[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="base", choices=sorted(DEFAULT_SHAPES))
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gin", action="append", default=[], help="extra LMConfig bindings, e.g. LMConfig.remat_policy='full'")
    args = ap.parse_args(argv)
    batch, seq = DEFAULT_SHAPES[args.config]
    batch, seq = args.batch or batch, args.seq or seq
    cfg = load_model_config(args.config, args.gin)

    peak_before = matmul_flops_per_s()
    # The training program itself (same jitted, donated, sharded step as `train()`), on one
    # device: XLA:CPU spreads a single device's ops over every core.
    task = LMTask(model=cfg, data=DataConfig(sequence_length=seq, batch_size=batch, pack=False),
                  optimizer=OptimizerConfig())
    program = build_program(task, MeshConfig(ici_parallelism=(1, 1, 1)),
                            RunConfig(model_dir="", train_steps=1000), devices=jax.devices()[:1])
    spec = program.spec
    with sharding_context(program.mesh, program.rules):
        state = program.initialize(seed=0)
        data = random_batch(batch, seq, cfg.vocab_size)
        step_s, state = time_steps(program.steps["train"], state, data, args.steps)

        # Where the time goes: the forward pass alone, and the step's matmuls alone.
        fwd = jax.jit(lambda p, x: merge_model(spec, p)(x).sum())
        fwd(state.params, data["decoder_input_tokens"]).block_until_ready()
        t = time.perf_counter()
        for _ in range(args.steps):
            fwd(state.params, data["decoder_input_tokens"]).block_until_ready()
        fwd_s = (time.perf_counter() - t) / args.steps
        attn_fwd_s, attn_train_s = (cfg.num_layers * x for x in attention_core_seconds(batch, seq, cfg, args.steps))
    peak_after = matmul_flops_per_s()
    peak = (peak_before + peak_after) / 2

    tokens = batch * seq
    flops = tokens * train_flops_per_token(cfg, seq)
    achieved = flops / step_s
    counts = param_count(cfg)
    print(f"config={args.config} attention_query_block={cfg.attention_query_block} batch={batch} seq={seq} params={counts['total']:,} "
          f"matmul_params={counts['matmul']:,} dtype={cfg.dtype} remat={cfg.remat_policy}")
    print(f"model_flops_per_step={flops:.4g} flops_per_token={train_flops_per_token(cfg, seq):.4g}")
    attn_flops = tokens * (train_flops_per_token(cfg, seq) - 6 * counts["matmul"])  # training
    rest_flops = flops - attn_flops
    print(f"step_s={step_s:.3f} forward_s={fwd_s:.3f} tokens_per_s={tokens / step_s:.0f}")
    print(f"profile: attention core (all layers) forward {attn_fwd_s:.3f}s, forward+backward "
          f"{attn_train_s:.3f}s = {attn_train_s / step_s:.0%} of the step at "
          f"{attn_flops / attn_train_s / 1e9:.1f} GFLOP/s; everything else (projections, MLP, "
          f"logits, loss, optimizer) {step_s - attn_train_s:.3f}s at "
          f"{rest_flops / max(step_s - attn_train_s, 1e-9) / 1e9:.1f} GFLOP/s")
    print(f"achieved_gflops={achieved / 1e9:.1f} matmul_peak_gflops={peak / 1e9:.1f} "
          f"(before {peak_before / 1e9:.1f}, after {peak_after / 1e9:.1f})")
    print(f"ratio_to_matmul_peak={achieved / peak:.3f}")


if __name__ == "__main__":
    main()
