"""The rendered corpus is musically right, captioned truthfully, split by work, resumable."""
import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from mufm.audio.features import chroma
from mufm.data.corpus import __main__ as corpus_cli
from mufm.data.corpus.config import DEFAULT_SOUNDFONT, get_config
from mufm.data.corpus.manifest import read_manifest, read_report
from mufm.data.corpus.works import Work, assign_splits



def _score_pitch_classes(source_path, number):
    from music21 import corpus
    s = corpus.parse(source_path, number=number, forceSource=True)
    w = np.zeros(12)
    for n in s.recurse().notes:
        for p in n.pitches:
            w[p.pitchClass] += float(n.duration.quarterLength)
    return w / w.sum()


def test_rendered_chorale_chroma_matches_its_score(tiny_corpus):
    """Pitch-class energy of the audio follows the score's duration-weighted pitch classes.

    Transpositions by a fourth or fifth share most of a diatonic key's notes (and the
    harmonics of every note), so for those only the mean over all chorale clips must favour
    the untransposed score; every other transposition must be clearly worse clip by clip.
    """
    chorales = [r for r in read_manifest(tiny_corpus) if r["work_id"].startswith("bach_")]
    assert len(chorales) >= 4
    all_corr = []
    for r in chorales:
        audio, sr = sf.read(os.path.join(tiny_corpus, r["audio"]), dtype="float32")
        assert sr == 24000 and audio.ndim == 1
        score = _score_pitch_classes(r["score"]["source_path"], r["score"]["number"])
        heard = chroma(audio, sr, fmax=1000.0)
        corr = np.array([np.corrcoef(np.roll(score, k), heard)[0, 1] for k in range(12)])
        all_corr.append(corr)
        assert corr[0] > 0.75, (r["clip_id"], np.round(corr, 2))
        assert corr[0] >= corr.max() - 0.03, (r["clip_id"], np.round(corr, 2))
        others = [k for k in range(1, 12) if k not in (5, 7)]
        assert corr[0] > corr[others].max() + 0.15, (r["clip_id"], np.round(corr, 2))
    assert int(np.argmax(np.mean(all_corr, axis=0))) == 0


def test_captions_state_the_attributes_and_the_audio_has_that_tempo(tiny_corpus):
    from music21 import midi
    recs = read_manifest(tiny_corpus)
    templates = set()
    for r in recs:
        a = r["attributes"]
        key = re.search(r"\b([A-G](?:#|b)?) (major|minor)\b", r["caption"])
        bpm = re.search(r"\b(\d+) (?:bpm|beats per minute)\b", r["caption"])
        assert key and bpm, r["caption"]
        assert f"{key.group(1)} {key.group(2)}" == a["key"] == f"{a['key_tonic']} {a['mode']}"
        assert int(bpm.group(1)) == a["bpm"]
        for field in ("time_signature", "instruments", "composer", "era", "texture", "region"):
            assert field in a
        templates.add(r["caption_template"])
        # the MIDI that was rendered opens at the captioned tempo ...
        mf = midi.MidiFile()
        mf.open(os.path.join(tiny_corpus, r["midi"]))
        mf.read()
        mf.close()
        tempos = [int.from_bytes(bytes(e.data[:3]) if not isinstance(e.data, str)
                                 else e.data[:3].encode("latin1"), "big")
                  for t in mf.tracks for e in t.events if e.type == midi.MetaEvents.SET_TEMPO]
        assert tempos and abs(60e6 / tempos[0] - a["bpm"]) < 0.5, (r["clip_id"], tempos[:2])
        # ... with the captioned instruments as its programs
        programs = {e.data for t in mf.tracks for e in t.events
                    if e.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE}
        assert programs == {p for _, p in r["variant"]["programs"]}, r["clip_id"]
        assert a["instruments"] == list(dict.fromkeys(n for n, _ in r["variant"]["programs"]))
        # ... and the audio lasts as long as the MIDI at that tempo (plus the release tail)
        dur = r["num_samples"] / 24000
        assert r["score"]["midi_seconds"] - 0.5 <= dur <= r["score"]["midi_seconds"] + 3.01, r["clip_id"]
    assert len(templates) >= 2, "captions should vary in wording"
    # variants of one work differ in palette or tempo
    by_work = {}
    for r in recs:
        by_work.setdefault(r["work_id"],
                           []).append((r["attributes"]["palette"], r["attributes"]["bpm"]))
    assert all(len(set(v)) == len(v) == 2 for v in by_work.values())


def test_no_work_in_two_splits(tiny_corpus):
    split_of = {}
    for r in read_manifest(tiny_corpus):
        assert split_of.setdefault(r["work_id"], r["split"]) == r["split"], r["work_id"]
    works = [Work(f"w{i}", "x", None, "bach", None, None, None, 1, 10.0) for i in range(200)]
    out = assign_splits(works, get_config("quick"))
    counts = {s: sum(w.split == s for w in out) for s in ("train", "validation", "test")}
    assert counts == {"train": 160, "validation": 20, "test": 20}
    # a work's split depends on its id and the seed, not on the order works are listed in
    again = {w.work_id: w.split for w in assign_splits(works[::-1], get_config("quick"))}
    assert again == {w.work_id: w.split for w in out}


def _tree_digest(d):
    """Hashes of every FLAC/MIDI/record file and the manifest: the build's observable result."""
    out = {}
    for sub in ("audio", "midi"):
        for root, _dirs, files in os.walk(os.path.join(d, sub)):
            for f in files:
                p = os.path.join(root, f)
                out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    out["manifest.jsonl"] = hashlib.sha256(open(os.path.join(d, "manifest.jsonl"),
                                                "rb").read()).hexdigest()
    return out


def test_interrupted_build_resumes_to_the_same_result(tiny_corpus, tmp_path, cli):
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "mufm.data.corpus", "build", f"--out={out}", *cli.tiny_args]
    proc = subprocess.Popen(cmd, cwd=cli.repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = os.path.join(out, "works")
    n_markers = lambda: (len([f for f in os.listdir(markers) if f.endswith(".json")])
                         if os.path.isdir(markers) else 0)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and n_markers() < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "build finished before it could be interrupted"
    time.sleep(0.3)  # land the kill anywhere, e.g. while a worker is writing a FLAC
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = n_markers()
    assert 1 <= done_before < 6
    assert not os.path.exists(os.path.join(out, "manifest.jsonl"))
    res = cli.run(out)
    report = read_report(out)
    assert report["works_already_done"] == done_before
    assert _tree_digest(out) == _tree_digest(tiny_corpus)
    # a third run finds everything done and renders nothing
    cli.run(out)
    assert read_report(out)["works_already_done"] == 6
    assert _tree_digest(out) == _tree_digest(tiny_corpus)
    assert "6/6 works rendered" in res.stdout


def test_config_change_in_existing_dir_is_refused(tiny_corpus, tmp_path, cli):
    out = str(tmp_path / "c")
    cli.run(out, "--limit=1")  # limit is not part of the config: same config
    res = cli.run(out, "--seed=7", check=False)
    assert res.returncode != 0 and "another config" in res.stderr


def test_medium_transposes_captions_attributes_labels_and_audio(medium_subset):
    from mufm.data.corpus import captions, labels
    recs = read_manifest(medium_subset)
    by_work = {}
    for r in recs:
        by_work.setdefault(r["work_id"], {})[r["variant"]["transpose"]] = r
    assert len(by_work) == 2 and all(len(v) == 3 for v in by_work.values())
    for variants in by_work.values():
        base = variants.pop(0)  # the first variant keeps the written key
        assert base["variant_id"].startswith("v0_")
        base_notes = labels.read_labels(medium_subset, base["clip_id"])["notes"]
        base_audio, _ = sf.read(os.path.join(medium_subset, base["audio"]), dtype="float32")
        base_chroma = chroma(base_audio, 24000, fmax=1000.0)
        for t, r in variants.items():
            a = r["attributes"]
            assert t != 0 and a["transpose"] == t and r["variant_id"].endswith(f"_t{t:+d}")
            # the key moves by t semitones, in the attributes and in the caption
            assert captions.pitch_class(a["key_tonic"]) == (
                captions.pitch_class(base["attributes"]["key_tonic"]) + t) % 12
            assert a["mode"] == base["attributes"]["mode"] and a["key"] in r["caption"]
            assert re.search(r"\b([A-G](?:#|b)?) (major|minor)\b", r["caption"]).group(0) == a["key"]
            # every labelled pitch moves by t (solo tunes: nothing is silenced by a channel)
            notes = labels.read_labels(medium_subset, r["clip_id"])["notes"]
            assert sorted(notes[:, 2] - t) == sorted(base_notes[:, 2])
            np.testing.assert_allclose(
                r["score"]["pitch_class_weights"],
                np.roll(base["score"]["pitch_class_weights"], t), atol=1e-6)
            # and so does what is heard: the chroma of the audio is the base's rolled by t
            audio, _ = sf.read(os.path.join(medium_subset, r["audio"]), dtype="float32")
            heard = chroma(audio, 24000, fmax=1000.0)
            corr = [np.corrcoef(np.roll(base_chroma, k), heard)[0, 1] for k in range(12)]
            assert int(np.argmax(corr)) == t % 12, (r["clip_id"], np.round(corr, 2))


def test_transposition_leaves_palettes_and_tempi_and_quick_alone():
    from mufm.data.corpus import variants
    medium = get_config("medium")
    plain = dataclasses.replace(medium, transpositions=())
    works = [Work(f"w{i}", "x", None, "bach", None, None, None, n, 10.0)
             for i, n in enumerate([1, 4] * 20)]
    moved = 0
    for w in works:
        a, b = variants.choose_variants(w, medium), variants.choose_variants(w, plain)
        assert [(v.palette, v.programs, v.tempo_scale) for v in a] == \
            [(v.palette, v.programs, v.tempo_scale) for v in b]
        assert a[0] == b[0] and all(v.transpose == 0 for v in b)
        moved += sum(v.transpose != 0 for v in a)
    assert moved == 2 * len(works)  # variants 1 and 2 of every work
    assert get_config("quick").transpositions == ()
    # a directory built before transpositions existed resumes under quick, not under medium
    recorded = get_config("quick").to_json()
    recorded.pop("transpositions")
    assert get_config("quick").same_as_recorded(recorded)
    assert not dataclasses.replace(get_config("quick"), transpositions=(1,)).same_as_recorded(
        recorded)


def test_mufm_soundfont_is_the_builds_soundfont(tmp_path, monkeypatch):
    """$MUFM_SOUNDFONT picks the soundfont and is part of the recorded config, so a resume
    with another soundfont is refused; a missing one fails before anything is recorded."""
    other = tmp_path / "other.sf2"
    other.write_bytes(b"RIFF")
    monkeypatch.setenv("MUFM_SOUNDFONT", str(other))
    assert get_config("quick").soundfont == str(other)
    assert get_config("full").soundfont == str(other)
    assert get_config("quick", soundfont="/x/y.sf2").soundfont == "/x/y.sf2"  # explicit wins
    out = tmp_path / "c"
    out.mkdir()
    (out / "build_config.json").write_text(json.dumps(get_config("quick").to_json()))
    monkeypatch.delenv("MUFM_SOUNDFONT")
    assert get_config("quick").soundfont == DEFAULT_SOUNDFONT
    with pytest.raises(ValueError, match="another config"):
        corpus_cli.main(["build", "--config=quick", f"--out={out}", "--limit=1", "--no-progress"])
    monkeypatch.setenv("MUFM_SOUNDFONT", str(tmp_path / "typo.sf2"))
    fresh = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError, match="MUFM_SOUNDFONT"):
        corpus_cli.main(["build", "--config=quick", f"--out={fresh}", "--limit=1", "--no-progress"])
    assert not (fresh / "build_config.json").exists()


def test_parse_time_limit_kills_and_retries_then_reports(tmp_path, cli):
    cli.needs_fluidsynth()
    out = str(tmp_path / "t")
    code = ("import dataclasses; from mufm.data.corpus.build import build; "
            "from mufm.data.corpus.config import get_config; "
            f"build(get_config('quick', parse_timeout_s=0.02), {out!r}, jobs=1, limit=1, progress=False)")
    subprocess.run([sys.executable, "-c", code], cwd=cli.repo, check=True, capture_output=True)
    rep = read_report(out)
    assert rep["works_rendered"] == 0 and rep["skipped_by_reason"] == {"parse_timeout": 1}
    marker = json.load(open(os.path.join(out, "works", rep["skipped"][0]["work_id"] + ".json")))
    assert marker["attempts"] == 2  # retried once with repeats stripped


def test_fluidsynth_guards(tiny_corpus, tmp_path):
    from mufm.data.corpus import render
    rec = read_manifest(tiny_corpus)[0]
    mid = os.path.join(tiny_corpus, rec["midi"])
    sf2 = get_config("quick").soundfont
    wav = str(tmp_path / "x.wav")
    with pytest.raises(render.RenderError) as e:  # output-length guard
        render.render_midi(mid, wav, sf2, 24000, expected_s=1.0, timeout_s=60, length_ratio=1.0,
                           slack_s=0.0)
    assert e.value.reason == "render_overrun" and not os.path.exists(wav)
    with pytest.raises(render.RenderError) as e:  # hard timeout
        render.render_midi(mid, wav, sf2, 24000, expected_s=1e4, timeout_s=0.0, length_ratio=1.0)
    assert e.value.reason == "render_timeout"
    render.render_midi(mid, wav, sf2, 24000, expected_s=rec["score"]["midi_seconds"], timeout_s=60,
                       length_ratio=2.0)
    assert sf.info(wav).samplerate == 24000
