"""The commands of `python -m mufm.mulan`: embed, tokens, search, fit_tokens, evaluate.

Audio in: any file soundfile or ffmpeg reads, downmixed to mono and resampled to 24 kHz.
Refused with one line and exit status 2: an unreadable or missing file, digital silence
(peak <= 1e-4: its embedding says nothing about music), audio shorter than the tower's
`min_seconds` (1 s), an empty caption. A caption longer than the run's `caption_tokens`
(64) is truncated to its first 62 word pieces, said on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from mufm.commands import CliError, command_table

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aiff", ".aif", ".opus")


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m mufm.mulan {command}")
    p.add_argument("--checkpoint_dir", required=True,
                   help="a MuLan training run's MODEL_DIR (newest step) or its checkpoints/<step>")
    p.add_argument("--batch", type=int, default=8, help="10 s windows per jitted call")
    return p


def _load(a):
    from mufm.mulan.embed import MuLan
    from mufm.train.restore import CheckpointNotFoundError, WrongFamilyError

    try:
        return MuLan.load(a.checkpoint_dir, batch=a.batch)
    except (CheckpointNotFoundError, WrongFamilyError) as e:
        raise CliError(str(e)) from None


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", dynamic_ncols=True, file=sys.stderr)


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    from mufm.audio import io as audio_io
    from mufm.audio.decode import DecodePolicy, load

    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file")
    try:
        return load(path, policy=DecodePolicy(sample_rate=sample_rate))
    except audio_io.AudioReadError as e:
        raise CliError(f"{path}: cannot use this audio ({e})") from None


def _captions(mulan, texts):
    from mufm.mulan.embed import BadInputError

    try:
        cut = mulan.truncated(texts)
        emb = mulan.embed_text(texts)
    except BadInputError as e:
        raise CliError(str(e)) from None
    except ValueError as e:  # the tokenizer's own check, reached through truncated()
        raise CliError(str(e)) from None
    for t, c in zip(texts, cut):
        if c:
            print(f"note: caption truncated to {mulan.caption_tokens} tokens: {t[:60]!r}...",
                  file=sys.stderr)
    return emb


def _clips(mulan, paths):
    from mufm.mulan.embed import BadInputError

    out, bar = [], _bar(len(paths), "embed")
    try:
        for p in paths:
            wave = read_audio(p, mulan.audio_cfg.sample_rate)
            try:
                out.append(mulan.embed_clip(wave))
            except BadInputError as e:
                raise CliError(f"{p}: {e}") from None
            bar.update(1)
    finally:
        bar.close()  # before the error line, so that line is the last one
    return np.stack(out)


def _inputs(p):
    p.add_argument("--text", action="append", default=[], help="a caption (repeatable)")
    p.add_argument("--audio", action="append", default=[], help="an audio file (repeatable)")


def embed_cmd(argv) -> int:
    p = _parser("embed")
    _inputs(p)
    p.add_argument("--out", required=True, help=".npy file of the [n, 128] embeddings")
    a = p.parse_args(argv)
    if bool(a.text) == bool(a.audio):
        raise CliError("give --text or --audio (one kind per call)")
    mulan = _load(a)
    emb = _captions(mulan, a.text) if a.text else _clips(mulan, a.audio)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.save(a.out, emb.astype(np.float32))
    print(f"{a.out}: {emb.shape[0]} x {emb.shape[1]} embeddings")
    return 0


def tokens_cmd(argv) -> int:
    p = _parser("tokens")
    _inputs(p)
    a = p.parse_args(argv)
    if bool(a.text) == bool(a.audio):
        raise CliError("give --text or --audio (one kind per call)")
    mulan = _load(a)
    if mulan.tokens is None:
        raise CliError(f"{a.checkpoint_dir} has no fitted tokens: run "
                       f"`python -m mufm.mulan fit_tokens --checkpoint_dir={a.checkpoint_dir}`")
    emb = _captions(mulan, a.text) if a.text else _clips(mulan, a.audio)
    for name, ids in zip(a.text or a.audio, mulan.tokens.encode(emb)):
        print(json.dumps({"input": name, "tokens": ids.tolist()}))
    return 0


def search_cmd(argv) -> int:
    p = _parser("search")
    p.add_argument("--folder", required=True, help="a folder of audio files (searched recursively)")
    p.add_argument("--query", required=True, help="the text to rank the files against")
    p.add_argument("--top", type=int, default=10)
    a = p.parse_args(argv)
    if not os.path.isdir(a.folder):
        raise CliError(f"{a.folder}: no such folder")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(a.folder) for f in files
                   if f.lower().endswith(AUDIO_EXTENSIONS))
    if not paths:
        raise CliError(f"{a.folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    mulan = _load(a)
    query = _captions(mulan, [a.query])[0]
    from mufm.mulan.embed import BadInputError

    scored, skipped, bar = [], [], _bar(len(paths), "search")
    for path in paths:
        try:
            e = mulan.embed_clip(read_audio(path, mulan.audio_cfg.sample_rate))
            scored.append((float(e @ query), path))
        except (CliError, BadInputError) as err:  # one bad file does not stop a search
            skipped.append(f"{path}: {err}")
        bar.update(1)
    bar.close()
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    if not scored:
        raise CliError(f"{a.folder}: none of {len(paths)} files could be embedded")
    for rank, (score, path) in enumerate(sorted(scored, reverse=True)[:a.top], 1):
        print(f"{rank:3d}  {score:+.4f}  {path}")
    return 0


def fit_tokens_cmd(argv) -> int:
    p = _parser("fit_tokens")
    p.add_argument("--passes", type=int, default=2,
                   help="epochs over the train split (each takes a new random 10 s crop per clip)")
    p.add_argument("--max_windows", type=int, default=50_000)
    p.add_argument("--num_levels", type=int, default=12)
    p.add_argument("--codebook_size", type=int, default=1024)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    mulan = _load(a)
    from mufm.data.pipeline import host_audio_batches
    from mufm.mulan.embed import TOKENS_DIR
    from mufm.mulan.tokens import MuLanTokens
    from mufm.train.restore import load

    data = load(a.checkpoint_dir, family="mulan").configs["data"]
    embs, bar = [], _bar(None, "embed train windows")
    for host in host_audio_batches(data, split=data.train_split, shuffle=False,
                                   num_epochs=a.passes, drop_remainder=False):
        embs.append(mulan.embed_windows(host["waveform"], host["waveform_length"]))
        bar.update(len(host["waveform"]))
        if sum(len(e) for e in embs) >= a.max_windows:
            break
    bar.close()
    if not embs:
        raise CliError(f"the train split of {data.mixture_or_task_name} is empty")
    x = np.concatenate(embs)[:a.max_windows]
    if len(x) < a.codebook_size:
        print(f"note: {len(x)} windows for {a.codebook_size} codes: some codes will coincide "
              f"(use --passes or a larger corpus)", file=sys.stderr)
    tokens = MuLanTokens.fit(x, num_levels=a.num_levels, codebook_size=a.codebook_size,
                             iters=a.iters, seed=a.seed,
                             info={"model_dir": mulan.model_dir, "passes": a.passes})
    out = tokens.save(os.path.join(mulan.model_dir, TOKENS_DIR))
    print(f"{out}: {a.num_levels} x {a.codebook_size} codebooks fitted on {len(x)} windows "
          f"(residual rms {tokens.info['final_residual_rms']:.4f})")
    return 0


def evaluate_cmd(argv) -> int:
    p = _parser("evaluate")
    p.add_argument("--corpus_dir", required=True, help="the built corpus (its manifest.jsonl)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--clips", type=int, default=0, help="at most this many clips (0: all)")
    p.add_argument("--window", default="center", choices=("center", "clip"),
                   help="center: the centre 10 s; clip: mean over 10 s windows with a 1 s hop")
    a = p.parse_args(argv)
    from mufm.mulan.embed import BadInputError
    from mufm.mulan.evaluate import evaluate_checkpoint

    mulan = _load(a)
    try:
        result = evaluate_checkpoint(mulan, a.corpus_dir, a.out_dir, split=a.split,
                                     max_clips=a.clips or None, window=a.window,
                                     progress_factory=lambda n: _bar(n, "evaluate"))
    except (ValueError, FileNotFoundError, BadInputError) as e:
        raise CliError(str(e)) from None
    with open(result.table_md) as f:
        print(f.read())
    print(f"table: {result.table_md} and {result.table_json}")
    return 0


COMMANDS = command_table("mufm.mulan", (
    ("embed", embed_cmd),
    ("tokens", tokens_cmd),
    ("search", search_cmd),
    ("fit_tokens", fit_tokens_cmd),
    ("evaluate", evaluate_cmd),
))
