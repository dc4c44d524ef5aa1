"""Waveform I/O: soundfile for wav/flac/ogg, the ffmpeg CLI for everything else (mp3, m4a).

Everything returns float32 arrays shaped ``[frames, channels]`` at the file's own rate;
`decode.py` turns that into checked mono 24 kHz audio. Reads can be windowed
(``start_s``/``duration_s``) so hour-long files are never loaded whole.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au")
FFMPEG_EXTENSIONS = (".mp3", ".m4a", ".aac", ".mp4", ".opus", ".wma", ".webm")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / float(self.sample_rate) if self.sample_rate else 0.0


class AudioReadError(Exception):
    """A file that cannot be read as audio. ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _uses_ffmpeg(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in FFMPEG_EXTENSIONS


def info(path: str) -> AudioInfo:
    """Header facts without decoding the samples (ffprobe for ffmpeg formats)."""
    if os.path.getsize(path) == 0:
        raise AudioReadError("empty_file")
    if _uses_ffmpeg(path):
        return _ffprobe_info(path)
    try:
        i = sf.info(path)
    except Exception as e:  # libsndfile raises LibsndfileError / RuntimeError
        raise AudioReadError("not_audio_or_corrupt", str(e)[:200]) from e
    if i.frames <= 0:
        raise AudioReadError("no_frames")
    if path.lower().endswith(".wav"):
        declared = _wav_declared_data_bytes(path)
        if declared is not None and declared[0] > declared[1]:
            raise AudioReadError("truncated",
                                 f"data chunk declares {declared[0]} bytes, file holds {declared[1]}")
    return AudioInfo(int(i.samplerate), int(i.channels), int(i.frames))


def _wav_declared_data_bytes(path: str) -> tuple[int, int] | None:
    """(bytes the RIFF 'data' chunk declares, bytes actually present), or None if not found.

    libsndfile quietly shortens a cut-off WAV to what is there; the header still says how
    long it was meant to be, which is how a truncated download is told from a short file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            cid, n = hdr[:4], int.from_bytes(hdr[4:8], "little")
            if cid == b"data":
                if n in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                    return None
                return n, size - pos - 8
            pos += 8 + n + (n & 1)
    return None


def read(path: str, start_s: float = 0.0,
         duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """Reads ``[frames, channels]`` float32 and the file's sample rate, optionally a window."""
    if os.path.getsize(path) == 0:
        raise AudioReadError("empty_file")
    if _uses_ffmpeg(path):
        return _ffmpeg_read(path, start_s, duration_s)
    try:
        f = sf.SoundFile(path)
    except Exception as e:
        raise AudioReadError("not_audio_or_corrupt", str(e)[:200]) from e
    with f:
        sr = f.samplerate
        try:
            start = int(round(start_s * sr))
            if start:
                f.seek(min(start, f.frames))
            n = -1 if duration_s is None else int(round(duration_s * sr))
            x = f.read(frames=n, dtype="float32", always_2d=True)
        except Exception as e:  # the header was fine, the data stops or breaks: a cut-off file
            raise AudioReadError("truncated", str(e)[:200]) from e
    return x, int(sr)


def _ffprobe_info(path: str) -> AudioInfo:
    if shutil.which("ffprobe") is None:
        raise AudioReadError("ffmpeg_missing", "install ffmpeg to read " + path)
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,duration:format=duration", "-of", "json", path]
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AudioReadError("not_audio_or_corrupt", p.stderr.decode(errors="replace")[:200])
    meta = json.loads(p.stdout or b"{}")
    streams = meta.get("streams") or []
    if not streams:
        raise AudioReadError("no_audio_stream")
    s = streams[0]
    dur = s.get("duration") or (meta.get("format") or {}).get("duration")
    sr = int(s.get("sample_rate") or 0)
    if not sr or dur in (None, "N/A"):
        raise AudioReadError("not_audio_or_corrupt", "ffprobe found no rate/duration")
    return AudioInfo(sr, int(s.get("channels") or 1), int(float(dur) * sr))


def _ffmpeg_read(path: str, start_s: float, duration_s: float | None) -> tuple[np.ndarray, int]:
    i = _ffprobe_info(path)
    cmd = ["ffmpeg", "-v", "error", "-nostdin"]
    if start_s:
        cmd += ["-ss", f"{start_s:.6f}"]  # before -i: fast seek, reads only what is needed
    cmd += ["-i", path]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    cmd += ["-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    if p.returncode != 0:
        raise AudioReadError("not_audio_or_corrupt", p.stderr.decode(errors="replace")[:200])
    x = np.frombuffer(p.stdout, dtype="<f4")
    x = x[: len(x) // i.channels * i.channels].reshape(-1, i.channels)
    return x.astype(np.float32, copy=True), i.sample_rate


def write_flac(path: str, wav: np.ndarray, sample_rate: int) -> None:
    """Writes 16-bit FLAC atomically (temp file + rename), so a killed build leaves no half file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".flac", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16", format="FLAC")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
