"""fluidsynth CLI rendering under a hard timeout and an output-length guard, then mastering.

The guard exists because fluidsynth can run away on some music21-written MIDI (one quartet
movement made it write 16 GB): the output file is watched while fluidsynth runs and the
process is killed as soon as it holds more audio than ``ratio x MIDI length + 30 s``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import soundfile as sf

from mufm.audio import loudness
from mufm.audio.decode import DecodePolicy, waveform_problem
from mufm.audio.resample import downmix

WAV_HEADER_SLACK = 4096
BYTES_PER_FRAME = 2 * 4  # fluidsynth file output: stereo float32
MAX_RELEASE_S = 3.0


class RenderError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def fluidsynth_binary() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RenderError("fluidsynth_missing", "apt-get install fluidsynth fluid-soundfont-gm")
    return exe


def render_midi(midi_path: str, wav_path: str, soundfont: str, sample_rate: int,
                expected_s: float, timeout_s: float, length_ratio: float,
                slack_s: float = 30.0) -> float:
    """Renders ``midi_path`` to a float WAV. Returns wall seconds; raises RenderError."""
    if not os.path.exists(soundfont):
        raise RenderError("soundfont_missing", soundfont)
    max_bytes = (int((length_ratio * expected_s + slack_s) * sample_rate * BYTES_PER_FRAME)
                 + WAV_HEADER_SLACK)
    cmd = [fluidsynth_binary(), "-ni", "-q", "-g", "0.5", "-r", str(sample_rate),
           "-o", "synth.cpu-cores=1", "-o", "synth.chorus.active=0",
           "-F", wav_path, "-T", "wav", "-O", "float", soundfont, midi_path]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    reason = None
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout_s:
            reason = "render_timeout"
        elif os.path.exists(wav_path) and os.path.getsize(wav_path) > max_bytes:
            reason = "render_overrun"
        if reason:
            proc.kill()
            proc.wait()
            if os.path.exists(wav_path):
                os.remove(wav_path)
            raise RenderError(reason,
                              f"after {time.monotonic() - t0:.1f} s, limit {max_bytes} bytes")
        time.sleep(0.01)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0 or not os.path.exists(wav_path):
        raise RenderError("render_failed", err[-300:])
    return time.monotonic() - t0


def master(wav_path: str, sample_rate: int, target_lufs: float, expected_s: float,
           max_seconds: float | None = None) -> np.ndarray:
    """Mono, trailing silence trimmed (<= 1 s past -60 dB, <= 3 s past the MIDI end), normalised."""
    x, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise RenderError("render_failed", f"fluidsynth wrote {sr} Hz")
    y = downmix(x)
    problem = waveform_problem(y, silence_peak=DecodePolicy().silence_peak)
    if problem:
        raise RenderError("rendered_" + problem.reason, problem.detail)
    loud = np.flatnonzero(np.abs(y) > 1e-3 * float(np.max(np.abs(y))))
    end = min(len(y), int(loud[-1]) + sample_rate) if loud.size else len(y)
    end = max(end, min(len(y), int(expected_s * sample_rate)))
    end = min(end, int((expected_s + MAX_RELEASE_S) * sample_rate))  # slow decays: keep 3 s of tail
    y = y[:end]
    if max_seconds:
        y = y[: int(max_seconds * sample_rate)]
    y, _ = loudness.normalize(y, sample_rate, target_lufs)
    return y
