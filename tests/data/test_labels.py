"""Note and beat labels: they line up with the rendered audio, and the build stores them."""
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from mufm.data.corpus import labels
from mufm.data.corpus.config import get_config
from mufm.data.corpus.manifest import read_manifest

SR = 24000
# A 3/4 tune with an eighth-note pickup, every note after a beat of silence: at 60 bpm
# the notes start at 0, 1.5, 4.5, 7.5 and 10.5 s; the pickup is half a beat, so the beats
# fall on 0.5, 1.5, ... 11.5 s and the bars start at 0.5, 3.5, 6.5 and 9.5 s.
KNOWN_ABC = ("X:1\nT:known\nM:3/4\nL:1/4\nQ:1/4=60\nK:C\n"
             "G,/ | z C z | z E z | z G z | z c z |]\n")
KNOWN_ONSETS = [0.0, 1.5, 4.5, 7.5, 10.5]
KNOWN_PITCHES = [55, 60, 64, 67, 72]
# Onset detection: energy per frame of WIN samples every HOP samples, a frame's time being
# its end (the first frame that holds a note's first samples ends within one hop after
# the onset), so a detected rise lags the labelled onset by at most a hop plus the
# synthesizer's attack to 20 dB over the silence; earlier than the label it cannot be.
WIN, HOP = 256, 128
TOLERANCE_S = (WIN + 2 * HOP) / SR  # ~21 ms


def _render_known(tmp_path, transpose=0):
    """Labels and audio of KNOWN_ABC through the build's own steps (piano, 60 bpm)."""
    from music21 import converter
    from mufm.data.corpus import render, score
    from mufm.data.corpus.variants import Variant
    s = converter.parse(KNOWN_ABC, format="abc")
    v = Variant("t", "piano", (("piano", 0),), 1.0, transpose)
    score.apply_variant(s, v, score.tempo_plan(s), 60)
    mid, wav = str(tmp_path / "known.mid"), str(tmp_path / "known.wav")
    score.write_midi(score.to_midi(s), mid)
    midi = labels.read_midi(mid)
    cfg = get_config("quick")
    render.render_midi(mid, wav, cfg.soundfont, SR, midi.length_s, 60, 2.0)
    y = render.master(wav, SR, cfg.target_lufs, midi.length_s)
    beats_q, downbeats_q = score.beat_grid(s)
    return labels.clip_labels(midi, beats_q, downbeats_q, len(y) / SR), y


@pytest.fixture(scope="module")
def known(tmp_path_factory, cli):
    cli.needs_fluidsynth()
    return _render_known(tmp_path_factory.mktemp("known"))


@pytest.fixture(scope="module")
def known_up3(tmp_path_factory, cli):
    cli.needs_fluidsynth()
    return _render_known(tmp_path_factory.mktemp("known3"), transpose=3)


def _frame_energy(y):
    n = 1 + (len(y) - WIN) // HOP
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    return (y[idx] ** 2).sum(axis=1), (np.arange(n) * HOP + WIN) / SR


def test_labelled_onsets_are_where_the_audio_starts_sounding(known):
    lab, y = known
    notes = lab["notes"]
    np.testing.assert_allclose(notes[:, 0], KNOWN_ONSETS, atol=1e-4)
    np.testing.assert_allclose(notes[:, 1] - notes[:, 0], [0.5, 1, 1, 1, 1], atol=1e-4)
    assert notes[:, 2].tolist() == KNOWN_PITCHES
    assert set(notes[:, 3]) == {0} and set(notes[:, 4]) == {0}  # piano, one part
    energy, t = _frame_energy(y)
    for onset in notes[:, 0]:
        quiet = (t > onset - 0.5) & (t <= onset - 0.05)
        floor = energy[quiet].max() if quiet.any() else 0.0
        # the first frame 20 dB over what sounded just before (the tail of the last note)
        near = np.flatnonzero((t >= onset - 0.2) & (energy > 100 * floor + 1e-9))
        assert near.size, onset
        detected = t[near[0]]
        assert onset - 1e-9 <= detected <= onset + TOLERANCE_S, (onset, detected)
    # and each labelled note sounds at its pitch: the strongest pitch class while it rings
    from mufm.audio.features import chroma
    for onset, pitch in zip(notes[:, 0], notes[:, 2]):
        seg = y[int(onset * SR):int((onset + 0.8) * SR)]
        assert int(np.argmax(chroma(seg, SR, n_fft=4096, hop=1024))) == int(pitch) % 12


def test_a_transposed_variant_moves_the_labelled_and_the_heard_pitches(known, known_up3):
    (lab, _), (up, y) = known, known_up3
    assert up["notes"][:, 2].tolist() == [p + 3 for p in KNOWN_PITCHES]
    np.testing.assert_array_equal(up["notes"][:, :2], lab["notes"][:, :2])  # same times
    np.testing.assert_array_equal(up["beats"], lab["beats"])
    from mufm.audio.features import chroma
    for onset, pitch in zip(up["notes"][:, 0], up["notes"][:, 2]):
        seg = y[int(onset * SR):int((onset + 0.8) * SR)]
        assert int(np.argmax(chroma(seg, SR, n_fft=4096, hop=1024))) == int(pitch) % 12


def test_beats_and_downbeats_follow_the_bars_and_the_pickup(known):
    lab, y = known
    np.testing.assert_allclose(lab["beats"], np.arange(12) + 0.5, atol=1e-4)
    np.testing.assert_allclose(lab["downbeats"], [0.5, 3.5, 6.5, 9.5], atol=1e-4)
    assert len(y) / SR > 12.5


def test_a_unison_on_one_channel_ends_at_the_first_note_off(tmp_path, cli):
    """fluidsynth sounds a pitch once per channel, and music21 puts parts that share an
    instrument on one channel: a unison of a half note (part 0) and a whole note (part
    1) is silent after the half note, and so are the labels."""
    cli.needs_fluidsynth()
    from music21 import instrument, note, stream, tempo
    from mufm.data.corpus import render, score
    s = stream.Score()
    for lengths in ([2.0, -2.0], [4.0]):
        part = stream.Part()
        organ = instrument.Instrument()
        organ.midiProgram = 19  # sustains while held: silence means released
        part.insert(0, organ)
        for q in lengths:
            part.append(note.Rest(quarterLength=-q) if q < 0 else note.Note("C4", quarterLength=q))
        s.insert(0, part)
    s.parts[0].insert(0, tempo.MetronomeMark(number=60))
    mid, wav = str(tmp_path / "u.mid"), str(tmp_path / "u.wav")
    score.write_midi(score.to_midi(s), mid)
    midi = labels.read_midi(mid)
    lab = labels.clip_labels(midi, [], [], midi.length_s)
    np.testing.assert_allclose(lab["notes"][:, :3], [[0.0, 2.0, 60]], atol=1e-4)
    render.render_midi(mid, wav, get_config("quick").soundfont, SR, midi.length_s, 60, 2.0)
    y = sf.read(wav)[0].mean(axis=1)
    rms_db = lambda a, b: 10 * np.log10(np.mean(y[int(a * SR):int(b * SR)] ** 2) + 1e-12)
    assert rms_db(0.5, 1.5) > rms_db(2.5, 3.5) + 25


def test_labels_are_cut_at_the_clip_and_windowed(known, tmp_path):
    lab, _ = known
    path = str(tmp_path / "audio" / "w" / ("v" + labels.SUFFIX))
    labels.write_labels(path, lab)
    first = open(path, "rb").read()
    labels.write_labels(path, lab)
    assert open(path, "rb").read() == first  # same arrays, same bytes (resume digests)
    back = labels.read_labels(str(tmp_path), "w/v")
    for k in ("notes", "beats", "downbeats"):
        assert back[k].dtype == np.float32 and np.array_equal(back[k], lab[k])
    w = labels.window(lab, 4.0, 4.0)  # [4, 8): the E (4.5 s) and the G (7.5 s, cut at 8)
    np.testing.assert_allclose(w["notes"][:, :3], [[0.5, 1.5, 64], [3.5, 4.0, 67]], atol=1e-4)
    np.testing.assert_allclose(w["beats"], [0.5, 1.5, 2.5, 3.5], atol=1e-4)
    np.testing.assert_allclose(w["downbeats"], [2.5], atol=1e-4)
    w = labels.window(lab, 5.0, 1.0)  # inside the E: it sounds from the window's start
    np.testing.assert_allclose(w["notes"][:, :3], [[0.0, 0.5, 64]], atol=1e-4)


def test_corpus_clips_have_labels_matching_their_midi_and_record(tiny_corpus):
    from music21 import midi as m21midi
    for r in read_manifest(tiny_corpus):
        lab = labels.read_labels(tiny_corpus, r["clip_id"])
        notes, beats = lab["notes"], lab["beats"]
        duration = r["num_samples"] / r["sample_rate"]
        assert r["labels"] == os.path.join("audio", r["clip_id"] + labels.SUFFIX)
        assert len(notes) == r["n_notes"] > 0 and len(beats) == r["n_beats"] > 0
        assert notes[:, 0].min() >= 0 and notes[:, 1].max() <= duration + 1e-4
        assert np.all(notes[:, 1] >= notes[:, 0]) and np.all(np.diff(notes[:, 0]) >= 0)
        # part k plays the variant's k-th instrument
        programs = [p for _, p in r["variant"]["programs"]]
        assert set(notes[:, 4].astype(int)) <= set(range(len(programs)))
        for part, prog in zip(notes[:, 4].astype(int), notes[:, 3].astype(int)):
            assert prog == programs[part], r["clip_id"]
        # the reader agrees with music21's own reading of the file: a note per note-on,
        # except a note-on that a later event of its pitch on its channel at the same tick
        # silences (parts music21 put on one channel: the second of a unison, or a note
        # starting as another part's same pitch ends), as fluidsynth plays them
        mf = m21midi.MidiFile()
        mf.open(os.path.join(tiny_corpus, r["midi"]))
        mf.read()
        mf.close()
        events = []  # (tick, track, seq, is_note_on, channel, pitch): fluidsynth's order
        for k, track in enumerate(mf.tracks):
            tick = 0
            for e in track.events:
                if isinstance(e, m21midi.DeltaTime):
                    tick += e.time
                elif e.type in (m21midi.ChannelVoiceMessages.NOTE_ON,
                                m21midi.ChannelVoiceMessages.NOTE_OFF):
                    on = e.type == m21midi.ChannelVoiceMessages.NOTE_ON and e.velocity > 0
                    events.append((tick, k, len(events), on, e.channel, e.pitch))
        events.sort()
        n_silenced = 0
        for i, (tick, _k, _seq, on, ch, pitch) in enumerate(events):
            j = i + 1
            while on and j < len(events) and events[j][0] == tick:
                if events[j][4:] == (ch, pitch):
                    n_silenced += 1
                    break
                j += 1
        assert len(notes) == sum(e[3] for e in events) - n_silenced, r["clip_id"]
        # beats at the captioned tempo (chorales are in 4/4 with a fixed tempo)
        if r["work_id"].startswith("bach_"):
            np.testing.assert_allclose(np.diff(beats), 60.0 / r["attributes"]["bpm"], atol=2e-3)
        # duration-weighted pitch classes of the labels are the score's (not exactly: the
        # labels count repeats twice and weigh by seconds, the score by written quarters)
        pcw = np.zeros(12)
        np.add.at(pcw, notes[:, 2].astype(int) % 12, notes[:, 1] - notes[:, 0])
        score_pcw = np.array(r["score"]["pitch_class_weights"])
        corr = [np.corrcoef(np.roll(pcw, k), score_pcw)[0, 1] for k in range(12)]
        assert corr[0] > 0.9 and corr[0] == max(corr), (r["clip_id"], np.round(corr, 2))


def test_works_finished_by_an_older_builder_are_redone_with_labels(tiny_corpus, tmp_path, cli):
    out = str(tmp_path / "old")
    shutil.copytree(tiny_corpus, out)
    old = sorted(os.listdir(os.path.join(out, "works")))[:2]
    for name in old:  # what a format-1 builder left: no format in the marker, no labels
        path = os.path.join(out, "works", name)
        marker = json.load(open(path))
        marker.pop("format")
        json.dump(marker, open(path, "w"))
        for cid in marker.get("clips", []):
            os.remove(os.path.join(out, "audio", cid + labels.SUFFIX))
    res = cli.run(out)
    assert "already_done=4" in res.stdout and "to_do=2" in res.stdout
    for r in read_manifest(out):
        a = open(os.path.join(out, r["labels"]), "rb").read()
        assert a == open(os.path.join(tiny_corpus, r["labels"]), "rb").read()
