"""A folder of deliberately broken files: every bad file reported with its reason, no crash."""
import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from mufm.audio import io as audio_io
from mufm.data import audio_folder as folder

SR = 24000


def _tone(seconds, sr=SR, channels=1, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


# file -> expected skip reason (None: usable)
EXPECTED = {
    "good_stereo_44k.wav": None, "good_6ch_48k.flac": None, "good_8ch.wav": None,
    "good.mp3": None, "good.m4a": None, "good.ogg": None, "long_hour_8k.wav": None,
    "short_pad.wav": None,
    "empty.wav": "empty_file", "truncated.wav": "truncated", "truncated.flac": "truncated",
    "garbage.wav": "not_audio_or_corrupt", "text_named.mp3": "not_audio_or_corrupt",
    "text_named.flac": "not_audio_or_corrupt", "nan.wav": "nan_or_inf", "inf.wav": "nan_or_inf",
    "silence.wav": "digital_silence", "nine_channels.wav": "too_many_channels",
    "short.wav": "too_short", "missing.wav": "missing_file",
}


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("folder")
    p = lambda n: str(d / n)
    sf.write(p("good_stereo_44k.wav"), _tone(3, 44100, 2), 44100)
    sf.write(p("good_6ch_48k.flac"), _tone(2.5, 48000, 6), 48000)
    sf.write(p("good_8ch.wav"), _tone(2, 16000, 8), 16000)
    sf.write(p("good.ogg"), _tone(2, 22050), 22050)
    for ext in ("mp3", "m4a"):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", p("good_stereo_44k.wav"),
                        p("good." + ext)], check=True)
    # one hour at 8 kHz: only the segments taken may be read
    hour = np.zeros(3600 * 8000, np.int16)
    hour[:] = (3000 * np.sin(2 * np.pi * 220 * np.arange(hour.size) / 8000)).astype(np.int16)
    sf.write(p("long_hour_8k.wav"), hour, 8000, subtype="PCM_16")
    del hour
    sf.write(p("short_pad.wav"), _tone(0.4), SR)
    open(p("empty.wav"), "wb").close()
    sf.write(p("full.wav"), _tone(4), SR, subtype="PCM_16")
    raw = open(p("full.wav"), "rb").read()
    open(p("truncated.wav"), "wb").write(raw[: len(raw) // 2])
    os.remove(p("full.wav"))
    sf.write(p("full.flac"), np.random.default_rng(0).normal(0, 0.2, 4 * SR).astype(np.float32), SR)
    raw = open(p("full.flac"), "rb").read()
    open(p("truncated.flac"), "wb").write(raw[: len(raw) // 2])
    os.remove(p("full.flac"))
    open(p("garbage.wav"), "wb").write(np.random.default_rng(1).bytes(5000))
    open(p("text_named.mp3"), "w").write("this is not audio\n" * 50)
    open(p("text_named.flac"), "w").write("neither is this\n" * 50)
    x = _tone(2)
    x[100] = np.nan
    sf.write(p("nan.wav"), x, SR, subtype="FLOAT")
    x = _tone(2)
    x[5] = np.inf
    sf.write(p("inf.wav"), x, SR, subtype="FLOAT")
    sf.write(p("silence.wav"), np.zeros(2 * SR, np.float32), SR)
    sf.write(p("nine_channels.wav"), _tone(1, SR, 9), SR)
    sf.write(p("short.wav"), _tone(0.3), SR)
    open(p("notes.txt"), "w").write("not an audio extension: ignored\n")
    with open(p("captions.jsonl"), "w") as f:
        for name in sorted(EXPECTED):
            f.write(json.dumps({"file": name, "caption": f"caption of {name}", "bpm": 90,
                                "key": "A minor",
                                "genre": "test"}) + "\n")
    return str(d)


def _opts(**kw):
    return folder.FolderOptions(segment_seconds=2.0, max_segments_per_file=4, min_seconds=1.0, **kw)


def test_every_bad_file_is_reported_with_its_reason(broken_folder, monkeypatch):
    reads = []
    real_read = audio_io.read

    def counting_read(path, start_s=0.0, duration_s=None):
        x, sr = real_read(path, start_s, duration_s)
        reads.append((os.path.basename(path), x.shape[0] / sr))
        return x, sr

    monkeypatch.setattr(audio_io, "read", counting_read)
    report = []
    clips = list(folder.iter_clips(broken_folder, os.path.join(broken_folder, "captions.jsonl"),
                                   _opts(pad_short=False), report))
    reasons = {r["file"]: r["reason"] for r in report}
    expected_bad = {f: r for f, r in EXPECTED.items() if r and f != "short_pad.wav"}
    expected_bad["short_pad.wav"] = "too_short"  # pad_short=False
    assert reasons == expected_bad
    good = {c["file"] for c in clips}
    assert good == {f for f, r in EXPECTED.items() if r is None and f != "short_pad.wav"}
    for c in clips:
        assert c["waveform"].dtype == np.float32 and c["waveform"].ndim == 1
        assert np.all(np.isfinite(c["waveform"])) and np.abs(c["waveform"]).max() <= 1.0
        assert c["caption"] == f"caption of {c['file']}" and c["attributes"]["bpm"] == "90"
    # resampled to 24 kHz: a 2 s segment of any rate is 48000 samples
    assert all(len(c["waveform"]) == 2 * SR for c in clips if c["file"] == "good_6ch_48k.flac")
    # the hour-long file: 4 evenly spaced segments, and only those 8 s were ever read
    hour = [c for c in clips if c["file"] == "long_hour_8k.wav"]
    assert len(hour) == 4 and hour[-1]["start_s"] > 3500
    assert sum(s for f, s in reads if f == "long_hour_8k.wav") <= 8.0 + 1e-6


def test_short_clips_are_padded_when_asked(broken_folder):
    report = []
    clips = [c for c in folder.iter_clips(broken_folder, None, _opts(pad_short=True), report)
             if c["file"] == "short_pad.wav"]
    assert len(clips) == 1 and len(clips[0]["waveform"]) == SR
    assert np.abs(clips[0]["waveform"][int(0.45 * SR):]).max() == 0.0


def test_musiccaps_metadata_takes_only_the_window(tmp_path):
    sf.write(str(tmp_path / "abc123.wav"), _tone(12), SR)
    sf.write(str(tmp_path / "[zzz999]-other.flac"), _tone(5, freq=220.0), SR)
    (tmp_path / "musiccaps.csv").write_text(
        "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id\n"
        "abc123,4,8,/m/0,\"['calm', 'sine']\",A calm sine tone.,1\n"
        "zzz999,0,10,/m/0,\"['low']\",A low tone.,2\n"
        "gone00,0,10,/m/0,\"['x']\",Not here.,3\n")
    report = []
    clips = list(folder.iter_clips(str(tmp_path), str(tmp_path / "musiccaps.csv"),
                                   folder.FolderOptions(segment_seconds=10.0), report))
    assert report == [{"file": "gone00", "reason": "missing_file", "detail": ""}]
    by_file = {c["file"]: c for c in clips}
    assert by_file["abc123.wav"]["start_s"] == 4.0 and len(by_file["abc123.wav"]["waveform"]) == 4 * SR
    assert by_file["abc123.wav"]["attributes"]["aspect_list"] == "calm, sine"
    assert len(by_file["[zzz999]-other.flac"]["waveform"]) == 5 * SR  # end_s past the file: clipped
