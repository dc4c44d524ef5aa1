"""`python -m mufm.generate` on the tiny random runs of conftest.py: runs named in a gin
file, the three kinds of request, WAVs and their index, one-line errors (exit 2)."""
import numpy as np
import pytest
import soundfile as sf

from mufm.generate.__main__ import main
from tests.sample.conftest import TEXTS

ROLES = ("mulan", "semantic", "coarse", "fine", "codec", "semantic_tokenizer")


@pytest.fixture(scope="module")
def gin_file(runs, tmp_path_factory):
    path = tmp_path_factory.mktemp("gin") / "tiny.gin"
    path.write_text("import mufm.generate.config\ninclude 'generate/sampling.gin'\n"
                    + "".join(f"GenerateConfig.{r} = '{runs[r]}'\n" for r in ROLES))
    return str(path)


def _index(capsys):
    return [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]


def test_role_flags_write_one_wav_per_sample(runs, tmp_path, capsys):
    flags = [f"--{k}={runs[k]}" for k in ROLES[:5]]
    out = str(tmp_path / "out.wav")
    assert main([*flags, "--text", TEXTS[0], "--seconds", "1", "--out", out, "--num_samples", "2",
                 "--no_progress"]) == 0
    paths = [str(tmp_path / "out-0.wav"), str(tmp_path / "out-1.wav")]
    assert _index(capsys) == [[TEXTS[0], "1", p] for p in paths]
    for p in paths:
        audio, rate = sf.read(p)
        assert rate == 24_000 and audio.shape == (24_000,) and np.isfinite(audio).all()
    assert not list(tmp_path.glob("*.partial"))


def test_gin_file_story_and_continuation(gin_file, tmp_path, capsys):
    story = str(tmp_path / "story.wav")
    assert main([f"--gin_file={gin_file}", "--gin.fine/SamplingConfig.top_k=8", "--story",
                 f"{TEXTS[0]}@1;{TEXTS[1]}@0.6", "--out", story, "--no_progress"]) == 0
    assert _index(capsys) == [[f"{TEXTS[0]}@1 | {TEXTS[1]}@0.6", "1.6", story]]
    assert sf.read(story)[0].shape == (int(1.6 * 24_000),)

    t = np.arange(int(1.3 * 24_000)) / 24_000
    prompt = str(tmp_path / "prompt.wav")
    sf.write(prompt, 0.3 * np.sin(2 * np.pi * 330 * t), 24_000)
    more = str(tmp_path / "more.wav")
    assert main([f"--gin_file={gin_file}", "--prompt_audio", prompt, "--seconds", "0.5",
                 "--out", more, "--no_progress"]) == 0
    [[caption, seconds, path]] = _index(capsys)
    assert caption == f"continuation of {prompt}" and float(seconds) == pytest.approx(32 / 25 + 0.5)
    assert sf.read(more)[0].shape == (32 * 960 + 12_000,)  # 32 whole prompt frames + 0.5 s


@pytest.mark.parametrize("flags,match", [
    (["--text", "", "--seconds", "1"], "empty"),
    (["--text", "a", "--seconds", "2000"], "over the limit"),
    (["--story", "a@1", "--text", "b"], "drop --text"),
    (["--story", "a@1;b"], "no '@seconds'"),
    (["--prompt_audio", "/nonexistent.wav", "--seconds", "1"], "unreadable"),
    (["--text", "a"], "--seconds is required"),
    (["--seconds", "1"], "give --text"),
    (["--text", "a", "--seconds", "1", "--gin.GenerateConfig.overlapp=0.2"], "overlapp"),
    (["--text", "a", "--seconds", "1", "--codec=/nonexistent"], "codec run"),
])
def test_bad_requests_fail_in_one_line(gin_file, tmp_path, capsys, flags, match):
    assert main([f"--gin_file={gin_file}", *flags, "--out", str(tmp_path / "x.wav"),
                 "--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not list(tmp_path.iterdir())  # nothing written


def test_cascade_bench_measures_the_runs_a_gin_file_names(gin_file):
    from mufm.bench.cascade import measure

    lines = []
    out = measure(gin_file, 0.5, batch=2, repeats=1, log=lines.append)
    assert out["rtf"] == out["rtfs"][0] > 0 and len(lines) == 2
    assert set(out["timings"]) == {"mulan", "semantic", "coarse", "fine", "codec"}
    assert sum(out["timings"].values()) <= 2 * 0.5 / out["rtf"]  # the stages are in the wall
