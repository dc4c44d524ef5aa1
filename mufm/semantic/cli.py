"""The commands of `python -m mufm.semantic`: fit_kmeans, encode, evaluate.

`--model_dir` is a semantic training run's MODEL_DIR (its model_config.json and
checkpoints/). fit_kmeans writes the run's `semantic_tokens/` (or `--tokens_dir`);
encode and evaluate read it. Audio in: any file soundfile or ffmpeg reads, downmixed to
mono and resampled to 24 kHz (said on stderr when it happens). Ids out: `.npy` int32
[frames], 25 per second (n // 960 frames of n samples at 24 kHz). User errors (a missing
run or file, unusable audio, bad flags) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mufm.commands import CliError, command_table


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m mufm.semantic {command}")
    p.add_argument("--model_dir", required=True, help="a semantic training run's MODEL_DIR")
    p.add_argument("--tokens_dir", default=None,
                   help="where the fitted k-means lives (default MODEL_DIR/semantic_tokens)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def _tokenizer(model_dir: str, tokens_dir: str | None):
    from mufm.semantic.tokens import SemanticTokenizer, TokensNotFoundError

    try:
        return SemanticTokenizer.load(model_dir, tokens_dir)
    except TokensNotFoundError as e:
        raise CliError(str(e)) from None


def fit_kmeans_cmd(argv) -> int:
    from mufm.semantic.tokens import FitConfig

    d = FitConfig()
    p = _parser("fit_kmeans")
    p.add_argument("--corpus_dir", required=True,
                   help="a corpus built by `python -m mufm.data.corpus build` (its train split), "
                        "or a folder of audio files")
    p.add_argument("--layer", type=int, default=None,
                   help="embedding layer (0: feature encoder, 1..C contrastive, then MLM); "
                        "default C + max(1, round(7 M / 12)), MusicLM's depth in the MLM module")
    p.add_argument("--num_clusters", type=int, default=d.num_clusters)
    p.add_argument("--max_frames", type=int, default=d.max_frames,
                   help="frames embedded at most (25 per second of audio)")
    p.add_argument("--crop_seconds", type=float, default=None,
                   help="random crop length (default: the run's training crop)")
    p.add_argument("--batch_crops", type=int, default=d.batch_crops)
    p.add_argument("--minibatch_frames", type=int, default=d.minibatch_frames)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    for name in ("num_clusters", "max_frames", "batch_crops", "minibatch_frames", "epochs"):
        if getattr(a, name) < 1:
            raise CliError(f"--{name}={getattr(a, name)}: must be >= 1")
    if a.crop_seconds is not None and a.crop_seconds < 0.04:
        raise CliError(f"--crop_seconds={a.crop_seconds}: must hold at least one 40 ms frame")
    from mufm.semantic.tokens import fit_tokens
    from mufm.train.restore import CheckpointNotFoundError, WrongFamilyError

    cfg = FitConfig(num_clusters=a.num_clusters, layer=a.layer, max_frames=a.max_frames,
                    crop_seconds=a.crop_seconds, batch_crops=a.batch_crops,
                    minibatch_frames=a.minibatch_frames, epochs=a.epochs, seed=a.seed)
    try:
        fit_tokens(a.model_dir, a.corpus_dir, cfg, tokens_dir=a.tokens_dir,
                   progress=not a.no_progress)
    except (CheckpointNotFoundError, WrongFamilyError, FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    return 0


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    from mufm.audio import io as audio_io
    from mufm.audio.decode import DecodePolicy, load

    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file")
    try:
        found = audio_io.info(path)
        # Silence is valid input (it has tokens too); unreadable, empty or NaN audio is not.
        wave = load(path, policy=DecodePolicy(sample_rate=sample_rate, silence_peak=-1.0),
                    info=found)
    except audio_io.AudioReadError as e:
        raise CliError(f"{path}: cannot use this audio ({e})") from None
    if found.sample_rate != sample_rate or found.channels != 1:
        print(f"note: {path} is {found.channels} ch at {found.sample_rate} Hz; encoded as mono "
              f"at {sample_rate} Hz", file=sys.stderr)
    return wave


def _progress(desc: str, total: int, disable: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, disable=disable,
               leave=False)

    def update(done: int, total_: int) -> None:
        bar.update(done - bar.n)
        if done >= total_:
            bar.close()

    return update


def encode_cmd(argv) -> int:
    p = _parser("encode")
    p.add_argument("inputs", nargs="+", help="audio files")
    p.add_argument("--out", required=True,
                   help="the .npy file (one input) or a directory (<input stem>.npy each)")
    p.add_argument("--batch_windows", type=int, default=8, help="windows per model call")
    a = p.parse_args(argv)
    if a.batch_windows < 1:
        raise CliError(f"--batch_windows={a.batch_windows}: must be >= 1")
    from mufm.semantic.tokens import BadAudioError

    single = len(a.inputs) == 1 and a.out.endswith(".npy")
    stems = [os.path.splitext(os.path.basename(x))[0] for x in a.inputs]
    if not single and len(set(stems)) < len(stems):
        raise CliError("two inputs share a file name stem; encode them into separate --out dirs")
    tok = _tokenizer(a.model_dir, a.tokens_dir)
    cfg = tok.cfg
    failed = 0
    for path, stem in zip(a.inputs, stems):
        try:
            wave = read_audio(path, cfg.sample_rate)
            ids = tok.encode_chunked(wave, batch_windows=a.batch_windows, progress=_progress(
                os.path.basename(path), len(wave) // cfg.hop, a.no_progress))
        except (CliError, BadAudioError) as e:
            msg = str(e) if str(e).startswith(path) else f"{path}: {e}"
            print(f"mufm.semantic: error: {msg}", file=sys.stderr)
            failed += 1
            continue
        out = a.out if single else os.path.join(a.out, stem + ".npy")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        np.save(out, ids.astype(np.int32))
        print(f"{out}: {len(ids)} ids (K = {tok.num_clusters}, layer {tok.layer}) for "
              f"{len(wave) / cfg.sample_rate:.2f} s")
    if failed:
        print(f"mufm.semantic: {failed} of {len(a.inputs)} inputs failed", file=sys.stderr)
        return 2
    return 0


def evaluate_cmd(argv) -> int:
    p = _parser("evaluate")
    p.add_argument("--corpus_dir", required=True, help="a built corpus (manifest and labels)")
    p.add_argument("--codec_dir", default=None,
                   help="a codec run for the level-0 baseline (omitted: no codec row)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="directory for evaluation.md and evaluation.json")
    p.add_argument("--max_seconds_per_clip", type=float, default=30.0,
                   help="centre crop of each clip (bounds the time per clip)")
    p.add_argument("--max_clips", type=int, default=None,
                   help="at most this many held-out clips, evenly spaced (default all)")
    p.add_argument("--probe_clips", type=int, default=64,
                   help="train clips for the probe and the log-mel k-means")
    p.add_argument("--probe_frames", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.max_seconds_per_clip < 0.04:
        raise CliError(f"--max_seconds_per_clip={a.max_seconds_per_clip}: must hold a 40 ms frame")
    for name in ("max_clips", "probe_clips", "probe_frames"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise CliError(f"--{name}={getattr(a, name)}: must be >= 1")
    tok = _tokenizer(a.model_dir, a.tokens_dir)
    codec = None
    if a.codec_dir:
        from mufm.codec.restore import CheckpointNotFoundError, load_codec

        try:
            codec = load_codec(a.codec_dir)
        except CheckpointNotFoundError as e:
            raise CliError(str(e)) from None
    from mufm.semantic.evaluate import evaluate_tokens

    try:
        result = evaluate_tokens(tok, a.corpus_dir, a.out, codec=codec, split=a.split,
                                 max_seconds_per_clip=a.max_seconds_per_clip,
                                 max_clips=a.max_clips, probe_clips=a.probe_clips,
                                 probe_frames=a.probe_frames, seed=a.seed,
                                 progress=not a.no_progress)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    with open(result.table_md) as f:
        print(f.read())
    print(f"tables: {result.table_md} and {result.table_json}")
    return 0


COMMANDS = command_table("mufm.semantic", (
    ("fit_kmeans", fit_kmeans_cmd),
    ("encode", encode_cmd),
    ("evaluate", evaluate_cmd),
))
