"""Long-form generation through the cascade on the tiny random runs of conftest.py: story
mode changes the conditioning exactly at its boundaries, a continuation keeps its prompt's
tokens verbatim in every stage, streaming yields the same audio as `generate` while the
rest is still being sampled, and a 10-minute request holds no more than a short one."""

import numpy as np
import pytest
import soundfile as sf

from mufm.sample.cascade import (CascadeError, Window, check_story, parse_story, plan_windows)
from mufm.sample.decode import generate_stage
from tests.sample.conftest import TEXTS

STORY = [(TEXTS[0], 1.2), (TEXTS[1], 1.0), ("a slow waltz", 0.8)]  # parts end at 30, 55, 75


def test_plan_windows_never_sample_across_a_cut_and_start_after_what_is_given():
    assert plan_windows(100, 50, 25, cuts=[60]) == [
        Window(0, 0, 50), Window(10, 40, 50), Window(35, 25, 50), Window(50, 35, 50)]
    # An audio prompt of 30 frames: the first window carries `keep` of it.
    assert plan_windows(100, 50, 25, given=30) == [Window(5, 25, 50), Window(30, 25, 50),
                                                   Window(50, 30, 50)]
    assert plan_windows(40, 50, 25, given=10) == [Window(0, 10, 40)]
    for total, window, keep, given, cuts in ((75, 50, 25, 0, [30, 55]), (200, 40, 10, 13, [14, 99]),
                                             (60, 8, 0, 0, [1, 2, 3])):
        plan = plan_windows(total, window, keep, given=given, cuts=cuts)
        end = given
        for w in plan:
            assert w.first_new == end and w.frames <= window and w.start >= 0
            assert not any(w.first_new < c < w.end for c in cuts)
            end = w.end
        assert end == total
    assert plan_windows(30, 50, 25, given=30) == []


def test_story_specs_are_parsed_and_checked():
    assert parse_story("soft piano@10; drums join@2.5;") == [("soft piano", 10.0),
                                                             ("drums join", 2.5)]
    assert check_story(STORY) == ([s for s, _ in STORY], [30, 55, 75])
    for spec, match in (("", "caption@seconds"), ("piano", "no '@seconds'"),
                        ("piano@ten", "not a number")):
        with pytest.raises(CascadeError, match=match):
            parse_story(spec)
    for story, match in (([], "empty story"), ([("", 2)], "caption is empty"),
                         ([("a", 2), ("b", 0)], "part 1 seconds=0"),
                         ([("a", 2), ("b", 0.01)], "shorter than one semantic frame"),
                         ([("a", 1000), ("b", 1000)], "over the limit"),
                         ([("a",)], "not \\(caption, seconds\\)")):
        with pytest.raises(CascadeError, match=match):
            check_story(story)


def _story_request(cascade):
    request = cascade.story_request(STORY, num_samples=2)
    # The random MuLan gives every caption the same tokens: distinct ones per part, so
    # that which part conditioned a window can be told.
    parts = np.array([[0, 1, 2], [5, 6, 7], [10, 11, 12]])
    return request._replace(mulan=np.repeat(parts[None], 2, axis=0))


@pytest.fixture(scope="module")
def story(cascade):
    request = _story_request(cascade)
    return request, cascade.tokens(request, seed=0, progress=False)


@pytest.mark.parametrize("stage", ["semantic", "coarse"])
def test_story_conditioning_changes_exactly_at_the_boundaries(cascade, story, stage):
    request, tokens = story
    assert request.cuts == (30, 55) and request.frames == 75
    unit = 1 if stage == "semantic" else 2  # coarse windows are in 50 Hz frames
    windows = tokens["windows"][stage]
    starts = {s.window.first_new // unit for s in windows}
    assert {30, 55} <= starts  # a window starts sampling at each boundary
    for s in windows:
        first, last = s.window.first_new // unit, (s.window.end - 1) // unit
        assert request.part(first) == request.part(last) == s.part  # none spans one
    assert [s.part for s in windows] == sorted(s.part for s in windows)
    assert {s.part for s in windows} == {0, 1, 2}


def test_story_windows_are_given_their_parts_caption(cascade, monkeypatch):
    """What each semantic and coarse window was conditioned on, as the sampler received
    it: the MuLan tokens of the part holding the frames it samples."""
    import mufm.sample.cascade as cascade_module

    request = _story_request(cascade)
    seen = []

    def spy(module, layout, examples, frames, config, key, **kwargs):
        if "mulan" in examples[0]:
            seen.append((layout.name, np.stack([e["mulan"] for e in examples])))
        return generate_stage(module, layout, examples, frames, config, key, **kwargs)

    monkeypatch.setattr(cascade_module, "generate_stage", spy)
    tokens = cascade.tokens(request, seed=0, progress=False)
    sampled = [s for name in ("semantic", "coarse") for s in tokens["windows"][name]]
    assert len(seen) == len(sampled)
    by_stage = {name: [m for n, m in seen if n == cascade.stages[name][1].name]
                for name in ("semantic", "coarse")}
    for name in ("semantic", "coarse"):
        for s, mulan in zip(tokens["windows"][name], by_stage[name]):
            np.testing.assert_array_equal(mulan, request.mulan[:, s.part])
    assert not np.array_equal(request.mulan[:, 0], request.mulan[:, 1])


@pytest.fixture(scope="module")
def prompt_wave():
    t = np.arange(int(1.7 * 24_000)) / 24_000  # 42 whole semantic frames and a bit
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
            ).astype(np.float32)


def test_continuation_keeps_the_prompts_tokens_in_every_stage(cascade, prompt_wave):
    from mufm.codec.tokenizer import encode_chunked

    request = cascade.continuation_request(prompt_wave, 1.0, sample_rate=24_000, num_samples=2)
    p = request.prompt_frames
    assert p == 42 and request.frames == 42 + 25 and request.samples == 42 * 960 + 24_000
    crop = prompt_wave[:p * 960]
    semantic = cascade.semantic_tokenizer.encode_chunked(crop)
    acoustic = encode_chunked(*cascade.codec.parts, crop[None])[0]
    tokens = cascade.tokens(request, seed=0, progress=False)
    for row in range(2):
        np.testing.assert_array_equal(tokens["semantic"][row, :p], semantic)
        np.testing.assert_array_equal(tokens["acoustic"][row, :2 * p], acoustic)
    # Every stage's first window carries the prompt's last frames as its prefix: the
    # acoustic prompt conditions coarse and fine, not only the semantic one.
    for stage, unit in (("semantic", 1), ("coarse", 2), ("fine", 2)):
        first = tokens["windows"][stage][0].window
        assert first.first_new == unit * p and first.prefix > 0, (stage, first)
    # Without captions, the prompt's own MuLan audio tokens condition it.
    np.testing.assert_array_equal(request.mulan[0, 0], cascade.mulan.tokens_audio(crop))


def test_continuation_audio_starts_with_the_prompt_and_reads_files(cascade, prompt_wave, tmp_path):
    path = str(tmp_path / "prompt.wav")
    sf.write(path, np.stack([prompt_wave, prompt_wave], 1), 24_000)  # stereo: downmixed
    audio = cascade.generate_continuation(path, 0.5, texts=[TEXTS[0]], seed=0, progress=False)
    assert audio.shape == (1, 42 * 960 + 12_000) and np.isfinite(audio).all()
    again = cascade.generate_continuation(prompt_wave, 0.5, sample_rate=24_000,
                                          texts=[TEXTS[0]], seed=0, progress=False)
    np.testing.assert_allclose(audio, again, atol=1e-4)  # the WAV's float32 round trip


def test_bad_prompts_are_refused_before_compute(cascade, runs, prompt_wave, tmp_path):
    from tests.sample.conftest import load

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    nan = prompt_wave.copy()
    nan[100] = np.nan
    for prompt, rate, seconds, match in ((prompt_wave[:20_000], 24_000, 1.0, "at least 1 s"),
                                         (nan, 24_000, 1.0, "audio prompt: .*nan"),
                                         (str(bad), None, 1.0, "unreadable"),
                                         (str(tmp_path / "none.wav"), None, 1.0, "unreadable"),
                                         (prompt_wave, None, 1.0, "sample_rate"),
                                         (prompt_wave, 24_000, 0.0, "positive"),
                                         (prompt_wave, 24_000, 1199.0, "prompt's seconds")):
        with pytest.raises(CascadeError, match=match):
            cascade.continuation_request(prompt, seconds, sample_rate=rate)
    with pytest.raises(CascadeError, match="semantic tokenizer"):
        load(runs, semantic_tokenizer=None).continuation_request(prompt_wave, 1.0,
                                                                 sample_rate=24_000)


def test_stream_yields_the_audio_of_generate_while_sampling(cascade):
    request = cascade.text_request(TEXTS, 2.0)
    chunks, unfinished = [], []
    for chunk in cascade.stream(request, seed=3, progress=False):
        chunks.append(chunk)
        run = cascade.last_run
        unfinished.append(run.done["fine"] < len(run.plans["fine"]))
    assert len(chunks) > 2 and unfinished[0]  # audio before the last fine window
    audio = cascade.generate(TEXTS, 2.0, seed=3, progress=False)
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), audio)
    assert audio.shape == (2, 48_000)


@pytest.mark.slow
def test_a_ten_minute_request_holds_what_a_short_one_does(cascade):
    """600 s through every stage and the decoder: the tracks hold at most a window or two
    of frames whatever the length (the same peaks as a 20 s request), and the audio comes
    out whole."""
    held = {}
    for seconds in (20.0, 600.0):
        request = cascade.text_request([TEXTS[0]], seconds)
        samples = sum(c.shape[1] for c in cascade.stream(request, progress=False))
        assert samples == int(seconds * 24_000)
        held[seconds] = dict(cascade.held)
    assert held[600.0] == held[20.0]
    windows = {"semantic": 50, "coarse": 50, "fine": 25}
    for name, peak in held[600.0].items():
        assert peak <= 2 * windows[name], (name, peak)


def test_a_cascade_on_the_8_device_mesh_gives_the_same_tokens(runs, cascade):
    """Every window's rows split over the data axis (2 of the cpu8 mesh's 2 x 2 x 2)."""
    from mufm import gin_flags
    from mufm.parallel.mesh import MeshConfig, build_mesh
    from tests.sample.conftest import load

    gin_flags.parse(["mesh/cpu8.gin"], [], finalize=False)
    try:
        mesh = build_mesh(MeshConfig())
    finally:
        import gin
        gin.clear_config()
    split = load(runs)
    split.mesh = mesh
    request = cascade.text_request(TEXTS + ["a third row: padded to 4"], 1.0)
    alone = cascade.tokens(request, seed=5, progress=False)
    both = split.tokens(request, seed=5, progress=False)
    for k in ("semantic", "acoustic"):
        np.testing.assert_array_equal(both[k], alone[k], err_msg=k)
