"""The checkpoint commands of `python -m mufm.codec`: encode, decode, roundtrip, evaluate.

Audio in: any file soundfile or ffmpeg reads (WAV, FLAC, MP3, ...), downmixed to mono and
resampled to the codec's 24 kHz (said on stderr when it happens). Codes out: `.npz` with
`codes` int16 [frames, levels], `num_samples` and `sample_rate`, so `decode` restores the
exact length; `decode` also takes a bare `.npy` [frames, levels]. Long files go through
the chunked tokenizer one window at a time (`--chunk_seconds`, default 30 s), with a
progress bar, so memory does not grow with the file.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mufm.commands import CliError, command_table

CODES_VERSION = 1


def _parser(command: str, *, wav_in: bool, wav_out: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m mufm.codec {command}")
    p.add_argument("--checkpoint_dir", required=True,
                   help="a codec training run's MODEL_DIR (newest step) or its checkpoints/<step>")
    if command != "evaluate":
        p.add_argument("input", help="audio file" if wav_in else "codes (.npz from encode, or .npy)")
        p.add_argument("output", help="WAV file" if wav_out else "codes file (.npz)")
        p.add_argument("--chunk_seconds", type=float, default=30.0,
                       help="window length of the chunked tokenizer (memory ~ one window)")
    if wav_in:
        p.add_argument("--num_levels", type=int, default=None,
                       help="RVQ levels to keep (default all: 12 levels = 6 kbit/s)")
    return p


def _load(checkpoint_dir: str):
    from mufm.codec.restore import CheckpointNotFoundError, load_codec

    try:
        return load_codec(checkpoint_dir)
    except CheckpointNotFoundError as e:
        raise CliError(str(e)) from None


def _progress(desc: str, total_frames: int):
    from tqdm.auto import tqdm

    bar = tqdm(total=total_frames, desc=desc, unit="frame", dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    from mufm.audio import io as audio_io
    from mufm.audio.decode import DecodePolicy, load

    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file")
    try:
        found = audio_io.info(path)
        # Silence is valid input for a codec: only unreadable, empty or non-finite audio fails.
        wave = load(path, policy=DecodePolicy(sample_rate=sample_rate, silence_peak=-1.0),
                    info=found)
    except audio_io.AudioReadError as e:
        raise CliError(f"{path}: cannot use this audio ({e})") from None
    if found.sample_rate != sample_rate or found.channels != 1:
        print(f"note: {path} is {found.channels} ch at {found.sample_rate} Hz; coded as mono "
              f"at {sample_rate} Hz", file=sys.stderr)
    return wave


def _encode(codec, wave: np.ndarray, num_levels, chunk_seconds: float) -> np.ndarray:
    from mufm.codec.tokenizer import BadAudioError, encode_chunked

    cfg = codec.configs['codec']
    if num_levels is not None and not 1 <= num_levels <= cfg.num_levels:
        raise CliError(f"--num_levels={num_levels}: the codec has 1..{cfg.num_levels} levels")
    frames = -(-len(wave) // cfg.hop)
    try:
        codes = encode_chunked(*codec.parts, wave[None], num_levels=num_levels,
                               chunk_frames=_chunk_frames(cfg, chunk_seconds),
                               progress=_progress("encode", frames))
    except BadAudioError as e:
        raise CliError(str(e)) from None
    return codes[0]


def _decode(codec, codes: np.ndarray, num_samples: int | None, chunk_seconds: float) -> np.ndarray:
    from mufm.codec.tokenizer import BadAudioError, decode_chunked

    try:
        wave = decode_chunked(*codec.parts, codes[None], chunk_frames=_chunk_frames(codec.configs['codec'], chunk_seconds),
                              progress=_progress("decode", codes.shape[0]))[0]
    except BadAudioError as e:
        raise CliError(str(e)) from None
    return wave[:num_samples] if num_samples else wave


def _chunk_frames(cfg, seconds: float) -> int:
    if seconds <= 0:
        raise CliError(f"--chunk_seconds={seconds}: must be > 0")
    return max(1, int(round(seconds * cfg.frame_rate)))


def write_wav(path: str, wave: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sf.write(path, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")


def read_codes(path: str) -> tuple[np.ndarray, int | None, int | None]:
    """(codes [frames, levels], num_samples or None, sample_rate or None)."""
    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CliError(f"{path}: not a .npz/.npy codes file ({e})") from None
    if isinstance(loaded, np.ndarray):
        codes, num_samples, rate = loaded, None, None
    else:
        if "codes" not in loaded:
            raise CliError(f"{path}: no `codes` array (has {sorted(loaded.files)})")
        codes = loaded["codes"]
        num_samples = int(loaded["num_samples"]) if "num_samples" in loaded else None
        rate = int(loaded["sample_rate"]) if "sample_rate" in loaded else None
    if codes.ndim != 2:
        raise CliError(f"{path}: codes must be [frames, levels], got shape {codes.shape}")
    return codes, num_samples, rate


def encode_cmd(argv) -> int:
    a = _parser("encode", wav_in=True, wav_out=False).parse_args(argv)
    codec = _load(a.checkpoint_dir)
    wave = read_audio(a.input, codec.configs['codec'].sample_rate)
    codes = _encode(codec, wave, a.num_levels, a.chunk_seconds)
    out = a.output if a.output.endswith(".npz") else a.output + ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, codes=codes.astype(np.int16), num_samples=len(wave),
             sample_rate=codec.configs['codec'].sample_rate, version=CODES_VERSION)
    kbps = codec.configs['codec'].bitrate(codes.shape[1]) / 1000
    print(f"{out}: {codes.shape[0]} frames x {codes.shape[1]} levels ({kbps:g} kbit/s) "
          f"for {len(wave) / codec.configs['codec'].sample_rate:.2f} s")
    return 0


def decode_cmd(argv) -> int:
    a = _parser("decode", wav_in=False, wav_out=True).parse_args(argv)
    codec = _load(a.checkpoint_dir)
    codes, num_samples, rate = read_codes(a.input)
    if rate is not None and rate != codec.configs['codec'].sample_rate:
        raise CliError(f"{a.input}: codes of a {rate} Hz codec; this one runs at {codec.configs['codec'].sample_rate} Hz")
    wave = _decode(codec, codes, num_samples, a.chunk_seconds)
    write_wav(a.output, wave, codec.configs['codec'].sample_rate)
    print(f"{a.output}: {len(wave) / codec.configs['codec'].sample_rate:.2f} s from {codes.shape[1]} levels")
    return 0


def roundtrip_cmd(argv) -> int:
    a = _parser("roundtrip", wav_in=True, wav_out=True).parse_args(argv)
    codec = _load(a.checkpoint_dir)
    wave = read_audio(a.input, codec.configs['codec'].sample_rate)
    codes = _encode(codec, wave, a.num_levels, a.chunk_seconds)
    out = _decode(codec, codes, len(wave), a.chunk_seconds)
    write_wav(a.output, out, codec.configs['codec'].sample_rate)
    from mufm.eval.audio_metrics import mel_distance, si_snr

    print(f"{a.output}: {codes.shape[1]} levels ({codec.configs['codec'].bitrate(codes.shape[1]) / 1000:g} kbit/s), "
          f"SI-SNR {float(si_snr(wave, out)):.2f} dB, mel distance "
          f"{float(mel_distance(wave[None], out[None])[0]):.3f}")
    return 0


def evaluate_cmd(argv) -> int:
    p = _parser("evaluate", wav_in=False, wav_out=False)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--split", default="test", help="held-out split of the run's task")
    p.add_argument("--clips", type=int, default=32, help="at most this many clips")
    p.add_argument("--clip_seconds", type=float, default=10.0)
    p.add_argument("--wav_clips", type=int, default=3, help="clips written as WAV")
    a = p.parse_args(argv)
    from mufm.codec.evaluate import evaluate_checkpoint

    codec = _load(a.checkpoint_dir)  # a clear error before any data is read
    try:
        result = evaluate_checkpoint(codec, a.out_dir, split=a.split,
                                     clip_seconds=a.clip_seconds, max_clips=a.clips,
                                     wav_clips=a.wav_clips)
    except ValueError as e:  # no rate this codec can spend, an empty split
        raise CliError(str(e)) from None
    with open(result.table_md) as f:
        print(f.read())
    print(f"table: {result.table_md} and {result.table_json}\nreconstructions: {result.wav_dir}")
    return 0


COMMANDS = command_table("mufm.codec", (
    ("encode", encode_cmd),
    ("decode", decode_cmd),
    ("roundtrip", roundtrip_cmd),
    ("evaluate", evaluate_cmd),
))
