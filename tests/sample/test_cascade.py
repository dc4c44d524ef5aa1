"""The text-to-audio cascade (mufm/sample/cascade.py) and its CLI on the tiny random runs
of tests/sample/conftest.py: sliding windows checked at their boundaries, seeds, bad input
and runs that do not fit. Story mode, continuation and streaming: test_long_form.py."""
import os

import jax
import numpy as np
import pytest

from mufm.lm.layouts import MISSING, coarse_stage, fine_stage, semantic_stage
from mufm.sample.cascade import CascadeError, Window, check_layouts, plan_windows
from mufm.sample.decode import SamplingConfig, generate_stage
from tests.sample.conftest import SECONDS, TEXTS, load


def test_plan_windows_cover_the_clip_and_stay_full():
    assert plan_windows(30, 50, 25) == [Window(0, 0, 30)]
    assert plan_windows(100, 50, 25) == [Window(0, 0, 50), Window(25, 25, 50), Window(50, 25, 50)]
    # The last window starts earlier instead of running past the end: a longer prefix.
    assert plan_windows(75, 50, 25) == [Window(0, 0, 50), Window(25, 25, 50)]
    assert plan_windows(80, 50, 10) == [Window(0, 0, 50), Window(30, 20, 50)]
    with pytest.raises(CascadeError, match="keep < window"):
        plan_windows(10, 4, 4)


def test_generate_gives_finite_audio_of_the_asked_length(cascade):
    audio = cascade.generate(TEXTS, SECONDS, seed=0, progress=False)
    assert audio.shape == (2, int(SECONDS * 24_000)) and audio.dtype == np.float32
    assert np.isfinite(audio).all()
    assert set(cascade.timings) == {"mulan", "semantic", "coarse", "fine", "codec"}


def test_same_seed_same_tokens_other_seed_other(cascade, tokens):
    again = cascade.generate_tokens(TEXTS, SECONDS, seed=0, progress=False)
    other = cascade.generate_tokens(TEXTS, SECONDS, seed=1, progress=False)
    for k in ("mulan", "semantic", "acoustic"):
        np.testing.assert_array_equal(again[k], tokens[k], err_msg=k)
    np.testing.assert_array_equal(other["mulan"], tokens["mulan"])  # the text decides these
    assert not np.array_equal(other["semantic"], tokens["semantic"])
    assert not np.array_equal(other["acoustic"], tokens["acoustic"])


def test_streams_are_complete_and_in_range(tokens):
    sem, ac = tokens["semantic"], tokens["acoustic"]
    assert sem.shape == (2, 75) and ac.shape == (2, 150, 4)
    assert sem.min() >= 0 and sem.max() < 8 and ac.min() >= 0 and ac.max() < 64
    assert MISSING not in sem and MISSING not in ac


@pytest.mark.parametrize("stage,levels", [("semantic", None), ("coarse", slice(0, 2)),
                                          ("fine", slice(2, 4))])
def test_each_window_carries_the_previous_ones_last_tokens(tokens, stage, levels):
    stream = tokens["semantic"] if stage == "semantic" else tokens["acoustic"][..., levels]
    windows = tokens["windows"][stage]
    assert len(windows) > 1
    end = 0
    for i, (w, codes, _) in enumerate(windows):
        assert w.start + w.frames <= stream.shape[1]
        if i:
            assert w.prefix > 0 and w.start + w.prefix == end  # the overlap is what exists
            prev_w, prev, _ = windows[i - 1]
            # The prefix is the previous window's last frames, token for token.
            np.testing.assert_array_equal(codes[:, :w.prefix], prev[:, w.start - prev_w.start:])
        np.testing.assert_array_equal(codes, stream[:, w.start:w.start + w.frames])
        end = w.start + w.frames
    assert end == stream.shape[1]
    if stage == "coarse":
        assert all(s.window.start % 2 == 0 for s in windows)  # whole semantic frames


@pytest.mark.parametrize("config", [SamplingConfig(temperature=1.0),
                                    SamplingConfig(temperature=1.0, cfg_scale=3.0)])
def test_a_prefix_continues_the_sample_it_was_cut_from(cascade, config):
    """Sampling with the first frames of a sample as prefix, with the same key (the noise is
    per position), reproduces the sample: the prefix sits at its training positions (in
    the null rows of guidance too)."""
    model, layout = cascade._modules["coarse"], cascade.stages["coarse"][1]
    rng = np.random.default_rng(0)
    ex = [{"mulan": rng.integers(0, 16, 3), "semantic": rng.integers(0, 8, 25)} for _ in range(2)]
    key = jax.random.key(3)
    full = generate_stage(model, layout, ex, 10, config, key)
    cut = [dict(e, acoustic=c[:4]) for e, c in zip(ex, full)]
    again = generate_stage(model, layout, cut, 10, config, key, prefix_frames=4)
    np.testing.assert_array_equal(again, full)


def test_bad_inputs_are_refused_before_compute(cascade):
    for texts, seconds, match in ((["a tune", " "], 1.0, "text 1 is empty"),
                                  ([], 1.0, "no text"),
                                  (["a tune"], 0, "positive"),
                                  (["a tune"], -2.0, "positive"),
                                  (["a tune"], float("nan"), "positive"),
                                  (["a tune"], 10_000.0, "over the limit")):
        with pytest.raises(CascadeError, match=match):
            cascade.generate(texts, seconds, progress=False)
    with pytest.raises(CascadeError, match="unknown stages"):
        cascade.generate(["a tune"], 1.0, configs={"codec": SamplingConfig()}, progress=False)
    with pytest.raises(CascadeError, match="not a SamplingConfig"):
        cascade.generate(["a tune"], 1.0, configs={"fine": 0.4}, progress=False)


def test_runs_that_do_not_fit_are_refused(runs):
    with pytest.raises(CascadeError, match="codec run .*'lm' run, not a 'codec' run"):
        load(runs, codec=runs["fine"])
    with pytest.raises(CascadeError, match="mulan run .*not a 'mulan' run"):
        load(runs, mulan=runs["codec"])
    with pytest.raises(CascadeError, match="fine run's layout"):
        load(runs, fine=runs["coarse"])
    with pytest.raises(CascadeError, match="not a lm training run|fine run"):
        load(runs, fine=os.path.dirname(runs["fine"]))


def test_layouts_that_disagree_are_named():
    sem = semantic_stage(50, mulan_levels=3, mulan_codes=16, semantic_codes=8)
    coarse = dict(semantic_frames=25, coarse_frames=50, coarse_levels=2, mulan_levels=3,
                  mulan_codes=16, semantic_codes=8, acoustic_codes=64)
    fine = dict(coarse_frames=25, fine_frames=25, coarse_levels=2, acoustic_levels=4,
                acoustic_codes=64)
    ok = (coarse_stage(**coarse), fine_stage(**fine))
    check_layouts((3, 16), sem, *ok, (4, 64))
    cases = [
        ((3, 32), sem, *ok, (4, 64), "the semantic stage takes 3 MuLan levels x 16 codes"),
        ((3, 16), sem, coarse_stage(**dict(coarse, semantic_codes=16)), ok[1], (4, 64),
         "8 semantic codes, the coarse stage reads 16"),
        ((3, 16), sem, *ok, (4, 128), "64 acoustic codes, the codec 128"),
        ((3, 16), sem, *ok, (6, 64), "the codec's 6 levels"),
        ((3, 16), sem, ok[0], fine_stage(**dict(fine, coarse_levels=1)), (4, 64),
         "conditioned on acoustic levels 0..0"),
        ((3, 16), sem, coarse_stage(**dict(coarse, coarse_frames=40)), ok[1], (4, 64),
         "not the 2 x 25 semantic frames"),
        ((3, 16), ok[0], *ok, (4, 64), "not \\[mulan\\] semantic"),
    ]
    for *args, match in cases:
        with pytest.raises(CascadeError, match=match):
            check_layouts(*args)


