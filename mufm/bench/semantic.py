"""Semantic model speed: `python -m mufm.bench.semantic [--gin_file=experiments/semantic_corpus_cpu.gin]
[--steps 5] [--seconds 30] [--model_dir RUN]`.

1. The training step of the experiment's model (default `semantic_base` at its CPU batch,
   8 crops of 4 s) through the trainer's own jitted program on a synthetic batch: its
   analytic model FLOP/s (`mufm.semantic.model.train_flops`: forward + backward = 3 x the
   forward's matmuls, convs and attention) over a 2048^3 fp32 matmul timed in the same
   process before and after (the mean is used; the two readings show the load moving).
2. Where the step's time goes: forward programs of the same parameters timed alone: the
   log-mel, the feature encoder (log-mel + subsampling convs), the conformer stacks (the
   embedding of the last layer, no losses) and the whole loss; the rest of the step is the
   backward pass and the optimizer.
3. Tokenization real-time factor (seconds of audio per second): `SemanticTokenizer.encode`
   on a batch of 8 training-length crops (what fit_kmeans and the evaluation run), and
   `encode_chunked` on one `seconds`-long file (windows of the crop with a quarter window of
   context each side, 8 windows per call). With --model_dir, the fitted tokenizer of that
   run; otherwise the same model with random weights and random centroids (the speed does
   not depend on the weights).

The last line is `semantic_ratio_to_matmul_peak=<float> tokenize_rtf=<float>` (the
batch-8 encode).
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from mufm.bench.task_step import (MatmulYardstick, experiment_program, harmonic_audio,
                                  print_header, seconds_per_call, time_train_step)


def random_tokenizer(program, state, num_clusters: int = 1024):
    """A SemanticTokenizer over the program's freshly initialised parameters with random
    centroids: the speed of a fitted one."""
    from flax import nnx

    from mufm.layers import kmeans
    from mufm.semantic.task import SemanticTask
    from mufm.semantic.tokens import SemanticTokenizer, default_layer
    from mufm.train.restore import LoadedModel
    from mufm.train.state import merge_model

    task = program.task
    model = merge_model(program.spec, jax.device_get(state.params))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    d = task.model.d_model
    centroids = jax.random.normal(jax.random.key(0), (num_clusters, d), jnp.float32)
    kstate = kmeans.KMeansState(centroids=centroids, counts=jnp.ones((num_clusters,)),
                                mean=jnp.zeros((d,)), std=jnp.ones((d,)),
                                step=jnp.zeros((), jnp.int32))
    loaded = LoadedModel(family="semantic", task_class=SemanticTask,
                         configs={"model": task.model, "data": task.data}, graphdef=graphdef,
                         params=params, model_state=rest, step=0, model_dir="")
    return SemanticTokenizer(model=loaded, state=kstate, layer=default_layer(task.model),
                             meta={"random": True})


def profile(program, state, wave: jax.Array, step_s: float) -> list[tuple[str, float]]:
    """[(label, seconds)] of forward pieces of the step's model, each jitted alone."""
    from mufm.train.state import merge_model

    spec, cfg = program.spec, program.task.model
    model = lambda p: merge_model(spec, p)
    pieces = {
        "log-mel": lambda p, w: model(p).encoder.log_mel(w),
        "feature encoder (log-mel + convs)": lambda p, w: model(p).encoder(w),
        "forward to the last layer (no losses)": lambda p, w: model(p).embed(w, cfg.num_layers),
        "forward with the losses": lambda p, w: model(p)(w, key=jax.random.key(0))[0],
    }
    rows = [(label, seconds_per_call(jax.jit(fn), state.params, wave)) for label, fn in pieces.items()]
    rows.append(("the rest (backward + optimizer)", step_s - rows[-1][1]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", default="experiments/semantic_corpus_cpu.gin")
    parser.add_argument("--gin", action="append", default=[], help="extra bindings")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="length of the file encode_chunked tokenizes")
    parser.add_argument("--model_dir", default=None,
                        help="a semantic run with fitted tokens (default: random weights)")
    args = parser.parse_args(argv)
    print_header()
    yard = MatmulYardstick()

    program = experiment_program(args.gin_file, args.gin)
    task, cfg = program.task, program.task.model
    b, n = task.data.batch_size, task.data.sequence_length
    host = {"waveform": harmonic_audio(b, n, cfg.sample_rate),
            "waveform_length": np.full((b,), n, np.int32)}
    timing, state = time_train_step(program, host, args.steps)
    wave = jnp.asarray(host["waveform"])
    rows = profile(program, state, wave, timing.seconds)

    if args.model_dir:
        from mufm.semantic.tokens import SemanticTokenizer
        tok = SemanticTokenizer.load(args.model_dir)
    else:
        tok = random_tokenizer(program, state)
    crop = tok.window_frames * tok.cfg.hop
    crops = harmonic_audio(8, crop, cfg.sample_rate, seed=1)
    encode_s = seconds_per_call(tok.encode, crops)
    long = harmonic_audio(1, int(args.seconds * cfg.sample_rate), cfg.sample_rate, seed=2)[0]
    chunked_s = seconds_per_call(lambda w: tok.encode_chunked(w), long, reps=2)
    peak = yard.close()

    params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"gin_file={args.gin_file} d_model={cfg.d_model} layers={cfg.contrastive_layers}+"
          f"{cfg.mlm_layers} params={params:,} batch={b} crop={n / cfg.sample_rate:g} s "
          f"({cfg.num_frames(n)} frames) dtype={cfg.dtype}")
    print(f"train step: {timing.seconds:.3f} s median of {args.steps} (spread {timing.spread:.0%}), "
          f"model_flops_per_step={timing.flops:.4g}, {timing.flops_per_s / 1e9:.1f} GFLOP/s, "
          f"{b * n / cfg.sample_rate / timing.seconds:.1f} s of audio per second")
    print("where the step's time goes (forward pieces jitted alone, same batch):")
    for label, secs in rows:
        print(f"  {label:40s} {secs:7.3f} s  {secs / timing.seconds:6.1%} of the step")
    print(f"tokenize ({'fitted ' + args.model_dir if args.model_dir else 'random weights'}, layer "
          f"{tok.layer}, K={tok.num_clusters}): encode batch 8 x {crop / cfg.sample_rate:g} s "
          f"{encode_s:.3f} s = rtf {8 * crop / cfg.sample_rate / encode_s:.1f}; encode_chunked "
          f"{args.seconds:g} s file {chunked_s:.3f} s = rtf {args.seconds / chunked_s:.1f}")
    print(f"{yard.line()}; load average at the end {os.getloadavg()[0]:.1f}")
    print(f"semantic_ratio_to_matmul_peak={timing.flops_per_s / peak:.4f} "
          f"tokenize_rtf={8 * crop / cfg.sample_rate / encode_s:.2f}")


if __name__ == "__main__":
    main()
