"""Codec speed: `python -m mufm.bench.codec [--configs tiny,base,paper] [--seconds 30]
[--batches 1,8] [--audio file.wav] [--no-profile] [--block_sweep 25,50,100]`.

For each model config (configs/models/codec_<name>.gin) it prints the encode and decode
real-time factors (seconds of audio per second of compute; higher is faster) on `seconds`
of audio at each batch size, and the achieved FLOP/s of encode+decode divided by the FLOP/s
of a 2048^3 fp32 jitted matmul measured in the same process (`mufm.bench.matmul_peak`, the
yardstick of every benchmark). Encode and decode run as the tokenizer runs them
(`mufm.codec.tokenizer`, block_frames="auto": on CPU, blocks of 25-50 frames in a scan,
exact); for the paper config the same is also timed in one pass over the whole 30 s
(block_frames=None), which is what blocking saves. Then, for the paper config, where the
time goes (each encoder/decoder stage and the quantizer, jitted and timed alone, on one
block and on 10 s in one pass). With --block_sweep it also times other block sizes (the
choice behind "auto").
The last line is `paper_rtf=<float> ratio_to_matmul_peak=<float>` (batch = the largest,
tokenizer default).

The paper config computes its convs in bf16 on accelerators; this CPU has no bf16 units
(XLA:CPU emulates them), so the CPU figures use fp32 compute, as a CPU deployment would.

FLOP counting is analytic: every conv costs 2 * K * Cin/groups * Cout * T_out (T_out its
output length; a stride-s transposed conv is counted as 2 * K * Cin * Cout * T_in, the
work of a direct implementation), plus 2 * K_codes * D per frame and level for the RVQ
distances. Elementwise work (ELU, bias, residual adds) is not counted.

Audio: the given WAV (mono-mixed, resampled by FFT to 24 kHz, tiled to length) or, by
default, a synthetic mixture of harmonic tones, an amplitude envelope and noise (the speed
of a conv net does not depend on what the audio sounds like). Programs are compiled ahead
of time (`lower().compile()`) so timings never include compilation.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mufm.audio import SAMPLE_RATE
from mufm.bench.matmul_peak import matmul_flops_per_s
from mufm.layers.seanet import elu
from mufm.codec.model import CodecConfig, build_codec, split_codec
from mufm.codec.losses import CodecLossConfig  # noqa: F401  (gin files bind it)
from mufm.codec import tokenizer as codec_tokenizer
from mufm.codec.tokenizer import block_frames_for
from mufm.codec.discriminators import DiscriminatorConfig  # noqa: F401


def load_config(name: str) -> CodecConfig:
    from mufm.gin_flags import parse

    parse([f"models/codec_{name}.gin"], [], finalize=False)  # configs/ is the include root
    try:
        cfg = CodecConfig()
    finally:
        gin.clear_config()
    if jax.default_backend() == "cpu":
        cfg = dataclasses.replace(cfg, dtype="float32")
    return cfg


def test_audio(seconds: float, batch: int, path: str | None = None) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    if path:
        import soundfile as sf
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        data = data.mean(1)
        if sr != SAMPLE_RATE:
            spec = np.fft.rfft(data)
            m = int(round(len(data) * SAMPLE_RATE / sr))
            data = np.fft.irfft(spec[:m // 2 + 1], m) * (m / len(data))
        wave = np.resize(data, n)
    else:
        rng = np.random.default_rng(0)
        t = np.arange(n) / SAMPLE_RATE
        wave = sum(0.1 / k * np.sin(2 * np.pi * 220.0 * k * t) for k in range(1, 8))
        wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)) + 0.01 * rng.normal(size=n)
    return np.broadcast_to(wave.astype(np.float32), (batch, n)).copy()


def timed(compiled, *args, repeats: int = 1) -> float:
    """Best wall time of `repeats` runs of an AOT-compiled function."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return best


def time_codec(graphdef, params, state, wave, block, repeats: int):
    """(encode seconds, decode seconds) of the tokenizer's jitted programs, compiled ahead of
    time (weights as arguments), best of N."""
    enc = codec_tokenizer.encode.lower(graphdef, params, state, wave, block_frames=block).compile()
    codes = enc(params, state, wave)
    dec = codec_tokenizer.decode.lower(graphdef, params, state, codes, block_frames=block).compile()
    # Best of several runs: the machine is shared, and one slow run says more about the
    # neighbours than about the codec.
    return timed(enc, params, state, wave, repeats=repeats), timed(dec, params, state, codes, repeats=repeats)


def bench_config(name: str, cfg: CodecConfig, seconds: float, batches, audio_path, matmul):
    model = build_codec(cfg)
    graphdef, params, state = split_codec(model)
    flops = model.flops(int(seconds * SAMPLE_RATE))
    enc_flops = flops["encoder"] + flops["quantizer"]
    dec_flops = flops["decoder"]  # the RVQ lookup-and-sum is gathers and adds: not counted
    modes = [("auto", "auto")] + ([("one pass", None)] if name == "paper" else [])
    results = {}
    for b in batches:
        wave = jnp.asarray(test_audio(seconds, b, audio_path))
        for label, block in modes:
            frames = block_frames_for(block, b)
            t_enc, t_dec = time_codec(graphdef, params, state, wave, frames,
                                      repeats=3)
            audio = seconds * b
            achieved = b * (enc_flops + dec_flops) / (t_enc + t_dec)
            if block == "auto":
                results[b] = dict(rtf=audio / (t_enc + t_dec), flops=achieved, ratio=achieved / matmul)
            print(f"{name:5s} C={cfg.channels:<3d} batch={b} {label:8s} "
                  f"(blocks of {frames or 'all'} frames): encode rtf={audio / t_enc:7.2f} "
                  f"decode rtf={audio / t_dec:7.2f} enc+dec rtf={audio / (t_enc + t_dec):7.2f} "
                  f"({t_enc:.2f}+{t_dec:.2f} s)  {achieved / 1e9:6.1f} GFLOP/s = "
                  f"{achieved / matmul:.3f} x matmul", flush=True)
    gflop_per_s_audio = (enc_flops + dec_flops) / seconds / 1e9
    print(f"{name:5s} model FLOPs per second of audio: encoder {flops['encoder'] / seconds / 1e9:.2f} G, "
          f"quantizer {flops['quantizer'] / seconds / 1e9:.3f} G, decoder "
          f"{flops['decoder'] / seconds / 1e9:.2f} G (enc+dec {gflop_per_s_audio:.2f} GFLOP)")
    return model, results


def sweep_blocks(cfg: CodecConfig, seconds: float, batches, sizes, audio_path):
    """Enc+dec RTF of the paper codec for each block size (frames per scan step)."""
    graphdef, params, state = split_codec(build_codec(cfg))
    for b in batches:
        wave = jnp.asarray(test_audio(seconds, b, audio_path))
        row = []
        for frames in sizes:
            t_enc, t_dec = time_codec(graphdef, params, state, wave, frames, repeats=2)
            row.append(f"{frames}: {seconds * b / t_enc:.1f}/{seconds * b / t_dec:.1f}/"
                       f"{seconds * b / (t_enc + t_dec):.2f}")
        print(f"block sweep, batch {b} (frames: encode/decode/enc+dec rtf): {', '.join(row)}",
              flush=True)


def _stage(module, fn):
    """A jittable (state, x) -> y for `fn(module, x)`, weights passed as arguments (not
    baked into the program as constants, as in the real encode/decode)."""
    graphdef, state = nnx.split(module)
    return state, lambda st, x: fn(nnx.merge(graphdef, st), x)


def stage_times(model, seconds: float, batch: int, audio_path):
    """[(label, seconds, flops)] of each stage timed alone (its own jitted program on its real
    input, weights as arguments)."""
    cfg = model.cfg
    enc, dec, rvq = model.encoder, model.decoder, model.quantizer
    call = lambda m, v: m(v)
    head = lambda m, v: m(elu(v))
    x = jnp.asarray(test_audio(seconds, batch, audio_path))[..., None]
    t_in = x.shape[1]
    pieces = [("enc.stem", enc.stem, call, enc.stem.flops(t_in))]
    for i, blk in enumerate(enc.blocks):
        pieces.append((f"enc.block{i} (/{blk.down.stride}, C={blk.down.shape[1]})", blk, call,
                       blk.flops(t_in)))
        t_in //= blk.down.stride
    pieces.append(("enc.head", enc.head, head, enc.head.flops(t_in)))
    frames = t_in
    pieces.append(("rvq.encode", rvq, lambda m, v: m.encode(v.astype(jnp.float32)),
                   2 * cfg.codebook_size * cfg.embedding_dim * frames * cfg.num_levels))
    pieces.append(("rvq.decode", rvq, lambda m, v: m.decode(v), 0))
    t = frames
    pieces.append(("dec.stem", dec.stem, call, dec.stem.flops(t)))
    for i, blk in enumerate(dec.blocks):
        pieces.append((f"dec.block{i} (x{blk.up.stride}, C={blk.up.shape[2]})", blk, call,
                       blk.flops(t)))
        t *= blk.up.stride
    pieces.append(("dec.head", dec.head, head, dec.head.flops(t)))
    repeats = max(2, int(round(10 / seconds)))  # short inputs: more runs against timer noise
    rows = []
    for label, module, fn, fl in pieces:
        state, f = _stage(module, fn)
        compiled = jax.jit(f).lower(state, x).compile()
        secs = timed(compiled, state, x, repeats=repeats)
        x = compiled(state, x)
        rows.append((label, secs, fl * batch))
    return rows


def profile(model, block_frames: int, audio_path, matmul):
    """Where the time goes: each stage alone on one CPU block (batch 1) and on 10 s in one
    pass, as milliseconds per second of audio, with its share and its FLOP/s."""
    block_s = block_frames / model.cfg.frame_rate
    runs = [stage_times(model, block_s, 1, audio_path), stage_times(model, 10.0, 1, audio_path)]
    totals = [sum(secs for _, secs, _ in rows) for rows in runs]
    print(f"profile (paper config, batch 1; each stage jitted alone; ms per second of audio, "
          f"share, x matmul):")
    print(f"  {'stage':30s} {'one block of ' + format(block_s, 'g') + ' s':>26s} {'10 s in one pass':>26s}")
    for i, (label, _, _) in enumerate(runs[0]):
        cols = []
        for rows, total, secs_audio in zip(runs, totals, (block_s, 10.0)):
            _, secs, fl = rows[i]
            ratio = f"{fl / secs / matmul:.2f}" if fl else "  - "
            cols.append(f"{1e3 * secs / secs_audio:7.2f} {100 * secs / total:5.1f}% {ratio:>5s}x")
        print(f"  {label:30s} {cols[0]:>26s} {cols[1]:>26s}")
    print(f"  {'sum':30s} {1e3 * totals[0] / block_s:7.2f} ms/s {'':13s}"
          f"{1e3 * totals[1] / 10.0:7.2f} ms/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,base,paper")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--audio", default=None, help="a WAV file to use instead of synthetic audio")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--block_sweep", default=None,
                        help="comma-separated block sizes (frames) to time on the paper config")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f})", flush=True)
    matmul = matmul_flops_per_s()
    print(f"2048^3 fp32 jitted matmul: {matmul / 1e9:.1f} GFLOP/s", flush=True)
    last = None
    for name in args.configs.split(","):
        cfg = load_config(name)
        model, results = bench_config(name, cfg, args.seconds, batches, args.audio, matmul)
        if name == "paper":
            last = results[max(batches)]
            if args.block_sweep:
                sweep_blocks(cfg, args.seconds, batches,
                             [int(v) for v in args.block_sweep.split(",")], args.audio)
            if not args.no_profile:
                profile(model, block_frames_for("auto", 1) or 50, args.audio, matmul)
    if last is None:
        last = results[max(batches)]
        print("(paper config not run: the final line reports the last config)")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (timings are best-of-N; a busy "
          f"machine lowers both the RTFs and the matmul reference)")
    print(f"paper_rtf={last['rtf']:.4f} ratio_to_matmul_peak={last['ratio']:.4f}")


if __name__ == "__main__":
    main()
