"""Checked decoding: any supported file -> mono float32 at the model rate, or a skip reason;
and `waveform_problem`, the one check of decoded samples (the codec tokenizer's too).

Reasons (``AudioReadError.reason``) are stable strings; data builders count them in their
JSON skip reports: ``empty_file``, ``not_audio_or_corrupt``, ``no_audio_stream``,
``no_frames``, ``truncated``, ``too_many_channels``, ``nan_or_inf``, ``digital_silence``,
``too_short``, ``ffmpeg_missing``. `waveform_problem` can also say ``wrong_sample_rate``,
``not_numeric``, ``wrong_shape`` and ``integer_pcm`` (of arrays handed in, not files).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mufm.audio import SAMPLE_RATE
from mufm.audio import io as audio_io
from mufm.audio.resample import downmix, resample


@dataclasses.dataclass(frozen=True)
class DecodePolicy:
    sample_rate: int = SAMPLE_RATE
    max_channels: int = 8
    silence_peak: float = 1e-4       # peak |x| at or below this is digital silence (-80 dBFS)
    min_seconds: float = 0.0         # shorter clips: skipped ("too_short") or padded, see below
    pad_short: bool = False          # True: zero-pad clips shorter than min_seconds instead


@dataclasses.dataclass(frozen=True)
class WaveformProblem:
    """What is wrong with a waveform: `reason`, a stable tag (listed in the module
    docstring), and `detail`, for people."""
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def waveform_problem(x, *, sample_rate: int | None = None, expected_rate: int = SAMPLE_RATE,
                     batched: bool = False,
                     silence_peak: float | None = None) -> WaveformProblem | None:
    """What is wrong with samples `x` (float in [-1, 1]), or None when they are usable.

    The one waveform check: the decoder skips files by its `reason`, the codec tokenizer
    raises BadAudioError with it. Layout: `batched` x is [batch, samples] (mono); otherwise
    [samples] or [samples, channels] (as read from a file). `sample_rate`, when given,
    must be `expected_rate`. With `silence_peak`, a peak |x| at or below it is
    "digital_silence" (a codec encodes silence; a data builder skips it).
    """
    if sample_rate is not None and int(sample_rate) != expected_rate:
        return WaveformProblem("wrong_sample_rate", f"audio is at {sample_rate} Hz, not "
                               f"{expected_rate} Hz: resample first (mufm.audio.resample)")
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        return WaveformProblem("not_numeric", f"waveform must be numeric, got dtype {arr.dtype}")
    if batched and arr.ndim != 2:
        return WaveformProblem("wrong_shape", f"waveform must be [batch, samples] (mono; "
                               f"downmix first), got shape {arr.shape}")
    if not batched and arr.ndim not in (1, 2):
        return WaveformProblem("wrong_shape", f"waveform must be [samples] or [samples, "
                               f"channels], got shape {arr.shape}")
    if arr.size == 0:
        return WaveformProblem("no_frames", f"waveform is empty: shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return WaveformProblem("integer_pcm", f"waveform must be float in [-1, 1], got integer "
                               f"dtype {arr.dtype} (divide int16 PCM by 32768)")
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.nonzero(bad)[0]
        at = (f"batch rows {sorted(set(where.tolist()))[:5]}" if batched
              else f"first at sample {int(where[0])}")
        return WaveformProblem("nan_or_inf", f"waveform holds {int(bad.sum())} NaN/Inf samples ({at})")
    if silence_peak is not None:
        peak = float(np.max(np.abs(arr)))
        if peak <= silence_peak:
            return WaveformProblem("digital_silence", f"peak |x| {peak:.3g} <= {silence_peak:g}")
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
    problem = waveform_problem(x, silence_peak=policy.silence_peak)
    if problem:
        raise audio_io.AudioReadError(problem.reason, problem.detail)
    y = resample(downmix(x), sr, policy.sample_rate)
    need = int(round(policy.min_seconds * policy.sample_rate))
    if y.shape[0] < need:
        if not policy.pad_short:
            raise audio_io.AudioReadError("too_short", f"{y.shape[0] / policy.sample_rate:.2f} s")
        y = np.pad(y, (0, need - y.shape[0]))
    return np.clip(y, -1.0, 1.0).astype(np.float32)
