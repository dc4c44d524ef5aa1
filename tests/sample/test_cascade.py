"""The text-to-audio cascade (mufm/sample/cascade.py) and its CLI on tiny runs: MuLan 3
levels x 16, the three stage LMs of configs/experiments/stage_tiny.gin (semantic windows of
50 frames, coarse 25 semantic -> 50 x 2 levels, fine 25 x levels 2..3) and the 4 x 64 codec,
each written with random weights (what they weigh does not matter here, shapes and
determinism do). Sliding windows are checked at their boundaries."""
import os

import jax
import numpy as np
import pytest
import soundfile as sf

from mufm.lm.layouts import MISSING, coarse_stage, fine_stage, semantic_stage
from mufm.sample.cascade import Cascade, CascadeError, Window, check_layouts, plan_windows
from mufm.sample.decode import SamplingConfig, generate_stage
from tests.semantic.conftest import CODEC_GIN

MULAN_GIN = "experiments/mulan_corpus_tiny.gin"
STAGE_GIN = "experiments/stage_tiny.gin"
STAGE_BINDINGS = {
    "semantic": [],
    "coarse": ["STAGE_TASK='mufm_tokens_coarse'", "TokenTaskRegistration.layout=@coarse_stage()"],
    "fine": ["STAGE_TASK='mufm_tokens_fine'", "TokenTaskRegistration.layout=@fine_stage()",
             "TokenTaskRegistration.conditioning_dropout=0.0"],
}
SECONDS = 3.0  # 75 semantic frames: 2 semantic, 5 coarse and 11 fine windows
TEXTS = ["a calm piano piece", "fast drums"]


def write_run(gin_file, model_dir, step, bindings=(), mark_codebooks=False):
    """A run directory `mufm.train.restore.load` reads, holding the inference model alone
    with small random weights. tests/semantic/conftest.py's `write_run` initialises the
    whole train state through the trainer (discriminators and optimizers too: ~20 s of
    compiling for the codec on a busy CPU); the loader only ever reads the inference
    sub-tree, so that is all this writes. `mark_codebooks`: the codec's random codebooks
    marked initialised (any codebook decodes codes to finite audio)."""
    import gin
    from flax import nnx

    from mufm.gin_flags import parse
    from mufm.train.checkpoint import CheckpointConfig, Checkpointer
    from mufm.train.restore import write_model_config

    parse([gin_file], [f'MODEL_DIR="{model_dir}"', "TRAIN_STEPS=1", *bindings])
    try:
        task = gin.query_parameter("train.task").scoped_configurable_fn()
    finally:
        gin.clear_config()
    # Shapes only, then numpy noise: initialising the codec and MuLan op by op (or jitted)
    # costs ~10 s each on a busy CPU, and no test here depends on what the weights are.
    abstract = nnx.eval_shape(lambda: type(task).inference_model(task.model_configs(),
                                                                 nnx.Rngs(0)))
    _, params, rest = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(0)
    noise = lambda v: (0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
    params = jax.tree.map(noise, nnx.to_pure_dict(params))
    rest = jax.tree.map(noise, nnx.to_pure_dict(rest))
    if mark_codebooks:
        rest["quantizer"]["initialized"] = np.ones_like(rest["quantizer"]["initialized"])
    sub = type(task).inference_path
    wrap = (lambda t: {sub: t}) if sub else (lambda t: t)
    state = {"params": wrap(params)}
    if jax.tree.leaves(rest):
        state["model_state"] = wrap(rest)
    write_model_config(model_dir, task)
    ckpt = Checkpointer(model_dir, CheckpointConfig(save_every=1, async_save=False))
    ckpt.save(step, state, {}, force=True)
    ckpt.close()
    return model_dir


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """{role: run dir} of the five tiny runs."""
    from mufm.mulan.tokens import MuLanTokens

    root = tmp_path_factory.mktemp("cascade_runs")
    out = {"codec": write_run(CODEC_GIN, str(root / "codec"), 1, mark_codebooks=True),
           "mulan": write_run(MULAN_GIN, str(root / "mulan"), 0)}
    emb = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    MuLanTokens.fit(emb / np.linalg.norm(emb, axis=1, keepdims=True), num_levels=3,
                    codebook_size=16).save(os.path.join(out["mulan"], "mulan_tokens"))
    for name, bindings in STAGE_BINDINGS.items():
        out[name] = write_run(STAGE_GIN, str(root / name), 0,
                              bindings=['TOKENS_DIR="/nonexistent"', *bindings])
    return out


def load(runs, **changes):
    dirs = dict(runs, **changes)
    return Cascade.load(dirs["mulan"], dirs["semantic"], dirs["coarse"], dirs["fine"], dirs["codec"])


@pytest.fixture(scope="session")
def cascade(runs):
    return load(runs)


@pytest.fixture(scope="session")
def tokens(cascade):
    return cascade.generate_tokens(TEXTS, SECONDS, seed=0, progress=False)


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
    for i, (w, codes) in enumerate(windows):
        assert w.start + w.frames <= stream.shape[1]
        if i:
            assert w.prefix > 0 and w.start + w.prefix == end  # the overlap is what exists
            prev_w, prev = windows[i - 1]
            # The prefix is the previous window's last frames, token for token.
            np.testing.assert_array_equal(codes[:, :w.prefix], prev[:, w.start - prev_w.start:])
        np.testing.assert_array_equal(codes, stream[:, w.start:w.start + w.frames])
        end = w.start + w.frames
    assert end == stream.shape[1]
    if stage == "coarse":
        assert all(w.start % 2 == 0 for w, _ in windows)  # whole semantic frames


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


def test_cli_writes_wavs_and_refuses_an_empty_text(runs, tmp_path, capsys):
    from mufm.generate.__main__ import main

    flags = [f"--{k}={runs[k]}" for k in ("mulan", "semantic", "coarse", "fine", "codec")]
    out = str(tmp_path / "out.wav")
    rc = main([*flags, "--text", TEXTS[0], "--seconds", "1", "--out", out, "--num_samples", "2",
               "--no_progress"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    paths = [str(tmp_path / "out-0.wav"), str(tmp_path / "out-1.wav")]
    assert [line.split("\t")[-1] for line in lines] == paths
    for p in paths:
        audio, rate = sf.read(p)
        assert rate == 24_000 and audio.shape == (24_000,)
    assert main([*flags, "--text", "", "--seconds", "1", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0]
