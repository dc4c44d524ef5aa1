"""Sampling throughput of the stage LM on the `base` shape (configs/models/base.gin).

    python -m mufm.bench.sample [--repeats 3] [--tokens 512] [--prompt 16]

Figures, all from this one process (the machine may be shared: compare within a run):

- cached: tokens/s of the jitted sampler (one prefill call, then a lax.scan step per
  token) generating `--tokens` tokens after a `--prompt`-token prompt, batch 1 and 8;
  compile excluded (ahead-of-time), every repeat timed end to end, prefill included.
- 2k context: per-token time of the cached loop over a 2048-slot cache against the full
  recompute a cacheless sampler does (one `StageLM.__call__` over 2048 tokens per token),
  batch 1; `cache_speedup_2k` is their ratio.
- the parts of one cached step at batch 1 and 8 (one layer's attention over a 513-slot
  cache in the old slots-first [b, s, h, d] and the current flat [b * h, s, d] cache
  layout, one MLP, the logits): where the batch-8 step's time went before the layout change.

- the cascade's real-time factor (seconds of audio per second of compute, compiled, batch
  1) on the runs `--cascade_gin` names (default configs/generate/cpu.gin: the CPU
  experiments), through `mufm.bench.cascade`.

Last line: `cached_tok_s_b1=... cached_tok_s_b8=... cache_speedup_2k=... cascade_rtf=...`.

What the batch-8 step spends (profiled per part inside a 512-step loop, 528-slot cache):
attention over the cache is 0.9 ms at batch 1 and 10.3 ms at batch 8, the MLPs and
projections (weights read once per step) 4.1 and 4.7 ms, sampling 0.1 and 0.8 ms. The
cache update is in place (no copy of the cache buffers in the compiled loop); what grows
with the batch is reading batch x slots of keys and values, 17 MB against 138 MB a step.
Measured with nothing else running: batch 1 at 99.8 tokens/s and batch 8 at 332.9 (326-356
over 3 repeats), cache speedup at 2k 104, cascade_rtf 0.586 (CPU runs, 20 s); another
idle run gave 172 and 459. The 231.6 tokens/s first quoted for batch 8 was measured on a
loaded machine. Reading only the filled part of
the cache (loops over a growing cache) cut attention but tripled compile time for a gain
lost in the noise, so the sampler keeps one loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.layers.attention import _attend, cached_attention
from mufm.lm.model import LMConfig, StageLM
from mufm.sample.decode import SamplingConfig, _choose, _full_logits, decode_steps, sample_parts

BASE = LMConfig(vocab_size=1024, d_model=512, num_layers=8, num_heads=8, d_ff=2048,
                activation="gelu", position="rope", dtype="float32", scan_layers=False,
                attention_query_block=128)
CONFIG = SamplingConfig(temperature=1.0, top_k=250)


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def _spread(xs) -> str:
    return f"median {np.median(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def cached_tokens_per_s(graphdef, state, batch: int, prompt: int, tokens: int,
                        repeats: int) -> list[float]:
    rng = np.random.default_rng(batch)
    prompts = jnp.asarray(rng.integers(3, BASE.vocab_size, (batch, prompt)), jnp.int32)
    lo = jnp.full((prompt + tokens,), 3, jnp.int32)
    hi = jnp.full((prompt + tokens,), BASE.vocab_size, jnp.int32)
    key = jax.random.key(0)
    compiled = sample_parts.lower(graphdef, state, prompts, lo, hi, key, num_tokens=tokens,
                                  config=CONFIG).compile()
    times = _timed(lambda: compiled(state, prompts, lo, hi, key), repeats)
    return [batch * tokens / t for t in times]


def context_2k(graphdef, state, repeats: int, steps: int = 32, length: int = 2048):
    """(cached, recompute) tokens/s at batch 1 with `length` tokens of context."""
    model = nnx.merge(graphdef, state)
    lo = jnp.full((length,), 3, jnp.int32)
    hi = jnp.full((length,), BASE.vocab_size, jnp.int32)
    key = jax.random.key(0)
    cache = model.init_cache(1, length)
    logits = jax.random.normal(key, (1, BASE.vocab_size))
    start = jnp.int32(length - steps)

    @jax.jit
    def run(state, cache, logits):
        m = nnx.merge(graphdef, state)
        return decode_steps(m, cache, logits, start, steps, lo, hi, key, CONFIG)

    compiled = run.lower(state, cache, logits).compile()
    # The loop attends over all slots whatever they hold: zeros cost what a real cache does.
    cached = [steps / t for t in _timed(lambda: compiled(state, cache, logits), repeats)]

    seq = jnp.asarray(np.random.default_rng(0).integers(3, BASE.vocab_size, (1, length)), jnp.int32)

    def recompute():
        out = _full_logits(graphdef, state, seq, jnp.int32(length - 1))
        return _choose(out, jnp.int32(length - 1), lo, hi, key, CONFIG)

    jax.block_until_ready(recompute())  # compile
    uncached = [1 / t for t in _timed(recompute, repeats)]
    return cached, uncached


def step_parts(batch: int, slots: int = 513, reps: int = 20) -> dict[str, float]:
    """ms of the pieces of one cached step (one layer for attention and MLP)."""
    h, d = BASE.num_heads, BASE.kv_dim
    rng = np.random.default_rng(0)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, bias = arr(batch, 1, h, d), jnp.zeros((batch, 1, 1, slots))
    slots_first, flat = arr(batch, slots, h, d), arr(batch * h, slots, d)
    graphdef, state = nnx.split(StageLM(dataclasses.replace(BASE, num_layers=1), rngs=nnx.Rngs(0)))
    on_model = lambda f: jax.jit(lambda state, x: f(nnx.merge(graphdef, state), x))
    x = arr(batch, 1, BASE.d_model)
    parts = {
        "attn_slots_first": (jax.jit(lambda q, k: _attend(q, k, k, bias, 0.0, None)), (q, slots_first)),
        "attn_flat": (jax.jit(lambda q, k: cached_attention(q, k, k, bias)), (q, flat)),
        "mlp": (on_model(lambda m, x: m.blocks[0].mlp(x)), (state, x)),
        "logits": (on_model(lambda m, x: m._logits(x)), (state, x)),
    }
    out = {}
    for name, (fn, args) in parts.items():
        jax.block_until_ready(fn(*args))
        out[name] = 1e3 * float(np.median(_timed(lambda: fn(*args), reps)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--cascade_gin", default="generate/cpu.gin",
                   help="the cascade whose real-time factor ends the line ('' to skip)")
    p.add_argument("--cascade_seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; base shape: {BASE.num_layers} "
          f"layers x {BASE.d_model}, {BASE.num_heads} heads, d_ff {BASE.d_ff}, vocab "
          f"{BASE.vocab_size}, fp32; sampling {CONFIG}")
    graphdef, state = nnx.split(StageLM(BASE, rngs=nnx.Rngs(0)))

    for batch in (1, 8):
        parts = step_parts(batch)
        print(f"step parts, batch {batch}, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))

    cached = {}
    for batch in (1, 8):
        cached[batch] = cached_tokens_per_s(graphdef, state, batch, args.prompt, args.tokens,
                                            args.repeats)
        print(f"cached, batch {batch}, {args.prompt}-token prompt + {args.tokens} tokens: "
              f"tokens/s {_spread(cached[batch])}")
    c2k, u2k = context_2k(graphdef, state, args.repeats)
    print(f"2048-token context, batch 1: cached tokens/s {_spread(c2k)}; full recompute "
          f"tokens/s {_spread(u2k)}")
    speedup = float(np.median(c2k) / np.median(u2k))
    rtf = float("nan")
    if args.cascade_gin:
        from mufm.bench.cascade import measure

        try:
            rtf = measure(args.cascade_gin, args.cascade_seconds, repeats=2)["rtf"]
        except (FileNotFoundError, ValueError) as e:  # the CPU runs are not trained here
            print(f"cascade {args.cascade_gin}: not measured ({e})")
    print(f"cached_tok_s_b1={np.median(cached[1]):.1f} cached_tok_s_b8={np.median(cached[8]):.1f} "
          f"cache_speedup_2k={speedup:.1f} cascade_rtf={rtf:.4f}")


if __name__ == "__main__":
    main()
