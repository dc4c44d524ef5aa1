"""MuLan speed: `python -m mufm.bench.mulan [--gin_file=experiments/mulan_corpus_cpu.gin]
[--steps 3] [--audio_batch 32] [--text_batch 256] [--model_dir RUN]`.

1. Embeddings per second: the audio tower on 10 s windows, `audio_batch` per jitted call
   (what `MuLan.embed_windows` runs), and the text tower on `text_batch` captions per call,
   tokenization included (what `MuLan.embed_text` runs), both through `mufm.mulan.embed.MuLan`
   on the experiment's model (random audio tower, the shipped MiniLM weights) or, with
   --model_dir, a trained run.
2. The training step of the experiment (default the base MuLan at batch 32 of 10 s crops,
   frozen MiniLM) through the trainer's own jitted program on a synthetic batch: its
   analytic model FLOP/s (`mufm.mulan.model.train_flops`) over a 2048^3 fp32 matmul timed
   in the same process before and after (the mean is used).
3. Where the step's time goes: the audio tower's log-mel, the audio tower's forward, the
   text tower's forward, each jitted alone on the step's batch; the rest is the backward
   pass through the audio tower and projections, the loss and the optimizer.

The last line is `mulan_audio_per_s=<float> mulan_text_per_s=<float> ratio_to_matmul_peak=<float>`.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from mufm.bench.task_step import (MatmulYardstick, experiment_program, harmonic_audio,
                                  print_header, seconds_per_call, time_train_step)

# Captions in the corpus's style, cycled to the batch (the text tower's speed depends on the
# padded length only, which is the task's caption_tokens).
CAPTIONS = (
    "a calm chorale in D major for string quartet at 72 bpm",
    "a lively jig in G major played on flute and fiddle, fast tempo",
    "a slow piano piece in A minor, 60 bpm, sparse and quiet",
    "a baroque minuet for harpsichord in F major, moderate tempo",
    "brass quintet, march in B-flat major, 112 bpm, loud",
)


def captions(n: int) -> list[str]:
    return [f"{CAPTIONS[i % len(CAPTIONS)]} (take {i})" for i in range(n)]


def main(argv=None):
    from mufm.mulan.embed import MuLan
    from mufm.train.state import merge_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", default="experiments/mulan_corpus_cpu.gin")
    parser.add_argument("--gin", action="append", default=[], help="extra bindings")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--audio_batch", type=int, default=32)
    parser.add_argument("--text_batch", type=int, default=256)
    parser.add_argument("--model_dir", default=None, help="a trained MuLan run to time instead")
    args = parser.parse_args(argv)
    print_header()
    yard = MatmulYardstick()

    program = experiment_program(args.gin_file, args.gin)
    task, cfg = program.task, program.task.model
    b, n = task.data.batch_size, task.data.sequence_length
    ids, mask = task.tokenize(captions(b))
    host = {"waveform": harmonic_audio(b, n, cfg.audio.sample_rate),
            "waveform_length": np.full((b,), n, np.int32), "text_ids": ids, "text_mask": mask}
    timing, state = time_train_step(program, host, args.steps)

    params = jax.device_get(state.params)
    model = merge_model(program.spec, params)
    wave, lengths = jnp.asarray(host["waveform"]), jnp.asarray(host["waveform_length"])
    spec = program.spec
    pieces = {
        "audio log-mel": lambda p, w, l: merge_model(spec, p).audio.log_mel(w),
        "audio tower forward": lambda p, w, l: merge_model(spec, p).embed_audio(w, l),
        "text tower forward": lambda p, w, l: merge_model(spec, p).embed_text(
            jnp.asarray(ids), jnp.asarray(mask)),
    }
    rows = [(label, seconds_per_call(jax.jit(fn), params, wave, lengths)) for label, fn in pieces.items()]

    mulan = (MuLan.load(args.model_dir, batch=args.audio_batch) if args.model_dir
             else MuLan(model=model, caption_tokens=task.caption_tokens, batch=args.audio_batch))
    W = mulan.audio_cfg.window_samples
    windows = harmonic_audio(args.audio_batch, W, mulan.audio_cfg.sample_rate, seed=1)
    full = np.full((args.audio_batch,), W, np.int32)
    audio_s = seconds_per_call(mulan.embed_windows, windows, full)
    texts = captions(args.text_batch)
    text_s = seconds_per_call(lambda c: mulan.embed_text(c, batch=args.text_batch), texts)
    peak = yard.close()

    audio_params = sum(x.size for x in jax.tree.leaves(params["audio"]))
    text_params = sum(x.size for x in jax.tree.leaves(params["text"]))
    print(f"gin_file={args.gin_file} audio tower {audio_params:,} params, text tower "
          f"{text_params:,} params ({'frozen' if cfg.text.frozen else 'fine-tuned'}), batch={b} "
          f"crop={n / cfg.audio.sample_rate:g} s caption_tokens={task.caption_tokens}")
    print(f"embeddings: audio {args.audio_batch} windows of {W / mulan.audio_cfg.sample_rate:g} s in "
          f"{audio_s:.3f} s = {args.audio_batch / audio_s:.1f} per s; text {args.text_batch} "
          f"captions (tokenized) in {text_s:.3f} s = {args.text_batch / text_s:.1f} per s")
    print(f"train step: {timing.seconds:.3f} s median of {args.steps} (spread {timing.spread:.0%}), "
          f"model_flops_per_step={timing.flops:.4g}, {timing.flops_per_s / 1e9:.1f} GFLOP/s")
    print("where the step's time goes (forward pieces jitted alone, same batch):")
    for label, secs in rows:
        print(f"  {label:40s} {secs:7.3f} s  {secs / timing.seconds:6.1%} of the step")
    rest = timing.seconds - rows[1][1] - rows[2][1]
    print(f"  {'the rest (backward, loss, optimizer)':40s} {rest:7.3f} s  {rest / timing.seconds:6.1%} of the step")
    print(f"{yard.line()}; load average at the end {os.getloadavg()[0]:.1f}")
    print(f"mulan_audio_per_s={args.audio_batch / audio_s:.2f} mulan_text_per_s="
          f"{args.text_batch / text_s:.2f} ratio_to_matmul_peak={timing.flops_per_s / peak:.4f}")


if __name__ == "__main__":
    main()
