"""Held-out evaluation of a trained codec against Opus and a trivial coder at equal bitrate.

Clips: centre crops of `clip_seconds` from the held-out split (default `test`: works never
seen in training) of the task the run trained on, read through the run's own DataConfig.
The codec encodes and decodes each clip with 3, 6 and 12 RVQ levels (1.5, 3 and 6 kbit/s
at 50 Hz x 10 bits); Opus (ffmpeg/libopus) and the mu-law coder code the same clips at the
same nominal rates. Writes `codec_comparison.{md,json}` and WAVs of the first clips (the
reference, the codec and Opus at each rate) under `out_dir`.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from mufm.codec import baselines

KBPS = (1.5, 3.0, 6.0)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    rows: list
    table_md: str
    table_json: str
    wav_dir: str
    clips: int


def held_out_clips(data, split: str, clip_seconds: float, max_clips: int,
                   sample_rate: int) -> tuple[list[np.ndarray], list[str]]:
    """Up to `max_clips` centre crops (trimmed to their real length) and their ids, read
    through `data` (the run's DataConfig) from `split`."""
    from mufm.data.pipeline import host_audio_batches

    data = dataclasses.replace(data, batch_size=1, sequence_length=int(clip_seconds * sample_rate),
                               shuffle=False)
    clips, ids = [], []
    for ex in host_audio_batches(data, split=split, shuffle=False, num_epochs=1):
        n = int(ex["waveform_length"][0])
        if n >= sample_rate:  # skip clips under a second
            clips.append(ex["waveform"][0, :n].astype(np.float32))
            ids.append(f"{split}_{len(ids):02d}")
        if len(clips) >= max_clips:
            break
    if not clips:
        raise ValueError(f"split {split!r} of {data.mixture_or_task_name!r} gave no clip of >= 1 s")
    return clips, ids


def evaluate_checkpoint(codec, out_dir: str, *, split: str = "test", clip_seconds: float = 10.0,
                        max_clips: int = 32, wav_clips: int = 3, kbps=KBPS) -> EvalResult:
    """`codec`: a loaded codec run (`mufm.codec.restore.load_codec(checkpoint_dir)`); its
    clips come through the run's own stored DataConfig."""
    from mufm.codec.tokenizer import decode_chunked, encode_chunked

    cfg = codec.configs["codec"]
    refs, ids = held_out_clips(codec.configs["data"], split, clip_seconds, max_clips,
                               cfg.sample_rate)
    wanted = {k: baselines.bitrate_levels(k, cfg.frame_rate, cfg.codebook_size) for k in kbps}
    levels = {k: q for k, q in wanted.items() if q <= cfg.num_levels}
    if not levels:
        raise ValueError(f"none of the rates {list(kbps)} kbit/s fits this codec's "
                         f"{cfg.num_levels} levels of {cfg.codebook_size} codes at "
                         f"{cfg.frame_rate:g} Hz (it spends at most {cfg.bitrate() / 1000:g} kbit/s)")
    kbps = tuple(levels)  # the rates this codec can spend; the others are not scored
    recons: dict[float, list[np.ndarray]] = {k: [] for k in kbps}
    t0 = time.perf_counter()
    for ref in tqdm(refs, desc="codec", unit="clip"):
        codes = encode_chunked(*codec.parts, ref[None], num_levels=max(levels.values()))
        for k, q in levels.items():
            recons[k].append(decode_chunked(*codec.parts, codes[:, :, :q])[0, :len(ref)])
    codec_s = time.perf_counter() - t0
    names = ("opus", "mulaw") if baselines.opus_available() else ("mulaw",)
    coded = baselines.code_baselines(refs, kbps, sample_rate=cfg.sample_rate, names=names)
    rows = baselines.comparison_rows(refs, recons, sample_rate=cfg.sample_rate, baselines=coded,
                                     codec_name=f"mufm codec (step {codec.step})")
    seconds = sum(len(r) for r in refs) / cfg.sample_rate
    notes = (f"{len(refs)} held-out clips ({split} split, centre crops <= {clip_seconds:g} s, "
             f"{seconds:.0f} s of audio) from {codec.model_dir} at step {codec.step}; codec "
             f"encode+decode of all rates took {codec_s:.1f} s. Opus: ffmpeg/libopus CBR; "
             f"'spent' counts the Ogg stream (libopus cannot go as low as 1.5 kbit/s). mulaw: "
             f"low-pass to bitrate/4 Hz + 4-bit mu-law.")
    md, js = baselines.write_comparison_table(rows, out_dir, notes=notes)
    wav_dir = os.path.join(out_dir, "wav")
    os.makedirs(wav_dir, exist_ok=True)
    for i in range(min(wav_clips, len(refs))):
        _write(wav_dir, f"{ids[i]}_reference.wav", refs[i], cfg.sample_rate)
        for k in kbps:
            _write(wav_dir, f"{ids[i]}_codec_{k:g}kbps.wav", recons[k][i], cfg.sample_rate)
            if "opus" in coded:
                _write(wav_dir, f"{ids[i]}_opus_{k:g}kbps.wav", coded["opus"][float(k)].waves[i],
                       cfg.sample_rate)
    return EvalResult(rows=rows, table_md=md, table_json=js, wav_dir=wav_dir, clips=len(refs))


def _write(directory: str, name: str, wave: np.ndarray, sample_rate: int) -> None:
    sf.write(os.path.join(directory, name), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
