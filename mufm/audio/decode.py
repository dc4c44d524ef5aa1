"""Checked decoding: any supported file -> mono float32 at the model rate, or a skip reason.

Reasons (``AudioReadError.reason``) are stable strings; data builders count them in their
JSON skip reports: ``empty_file``, ``not_audio_or_corrupt``, ``no_audio_stream``,
``no_frames``, ``truncated``, ``too_many_channels``, ``nan_or_inf``, ``digital_silence``,
``too_short``, ``ffmpeg_missing``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mufm.audio import io as audio_io
from mufm.audio.resample import downmix, resample

SAMPLE_RATE = 24000


@dataclasses.dataclass(frozen=True)
class DecodePolicy:
    sample_rate: int = SAMPLE_RATE
    max_channels: int = 8
    silence_peak: float = 1e-4       # peak |x| at or below this is digital silence (-80 dBFS)
    min_seconds: float = 0.0         # shorter clips: skipped ("too_short") or padded, see below
    pad_short: bool = False          # True: zero-pad clips shorter than min_seconds instead


def check_waveform(x: np.ndarray, policy: DecodePolicy = DecodePolicy()) -> str | None:
    """The skip reason for decoded samples, or None when they are usable."""
    if x.size == 0:
        return "no_frames"
    if not np.all(np.isfinite(x)):
        return "nan_or_inf"
    if float(np.max(np.abs(x))) <= policy.silence_peak:
        return "digital_silence"
    return None


def load(path: str, start_s: float = 0.0, duration_s: float | None = None,
         policy: DecodePolicy = DecodePolicy(),
         info: audio_io.AudioInfo | None = None) -> np.ndarray:
    """Reads ``path`` (or a window of it) as mono float32 at ``policy.sample_rate``.

    Raises AudioReadError with a reason for anything unusable. Only the requested window
    is read from disk, so crops of hour-long files are cheap.
    """
    info = info or audio_io.info(path)
    if info.channels < 1 or info.channels > policy.max_channels:
        raise audio_io.AudioReadError("too_many_channels", f"{info.channels} channels")
    x, sr = audio_io.read(path, start_s, duration_s)
    want = info.frames - int(round(start_s * info.sample_rate))
    if duration_s is not None:
        want = min(want, int(round(duration_s * info.sample_rate)))
    # ffmpeg durations are estimates; sound file headers are exact.
    slack = 0.97 if audio_io._uses_ffmpeg(path) else 0.999
    if want > 0 and x.shape[0] < slack * want - 1:
        raise audio_io.AudioReadError("truncated", f"read {x.shape[0]} of {want} frames")
    reason = check_waveform(x, policy)
    if reason:
        raise audio_io.AudioReadError(reason)
    y = resample(downmix(x), sr, policy.sample_rate)
    need = int(round(policy.min_seconds * policy.sample_rate))
    if y.shape[0] < need:
        if not policy.pad_short:
            raise audio_io.AudioReadError("too_short", f"{y.shape[0] / policy.sample_rate:.2f} s")
        y = np.pad(y, (0, need - y.shape[0]))
    return np.clip(y, -1.0, 1.0).astype(np.float32)
