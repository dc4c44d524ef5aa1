"""End to end on a tiny rendered corpus: `python -m mufm.train` 4 steps vs 2 + resume 2
(bitwise equal, caption augmentation included), then the CLI on the run: fit_tokens,
tokens (deterministic), search, evaluate, and one-line errors for bad input."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile as sf

from tests.train_runs import REPO, checkpoint_steps, path_name, scalars, tiny_corpus, train_env

pytestmark = pytest.mark.slow
GIN = "experiments/mulan_corpus_tiny.gin"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mulan_corpus")
    return tiny_corpus(str(root / "tiny")), str(root / "tfds")


def env(tfds_dir):
    return dict(train_env(1), MUFM_TFDS_DIR=tfds_dir)


def train(corpus, model_dir, *bindings):
    corpus_dir, tfds_dir = corpus
    proc = subprocess.run([sys.executable, "-m", "mufm.train", f"--gin_file={GIN}",
                           f'--gin.MODEL_DIR="{model_dir}"', f'--gin.CORPUS_DIR="{corpus_dir}"',
                           "--gin.CheckpointConfig.save_every=2", "--gin.RunConfig.log_every=2",
                           *bindings], cwd=REPO, env=env(tfds_dir), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def mulan(corpus, *args):
    return subprocess.run([sys.executable, "-m", "mufm.mulan", *args], cwd=REPO,
                          env=env(corpus[1]), capture_output=True, text=True, timeout=600)


def saved_state(model_dir, step):
    tree = ocp.StandardCheckpointer().restore(os.path.join(model_dir, "checkpoints", str(step), "state"))
    return {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("mulan_runs")
    ref, resumed = str(root / "ref"), str(root / "resumed")
    train(corpus, ref, "--gin.TRAIN_STEPS=4", "--gin.RunConfig.eval_every=4")
    train(corpus, resumed, "--gin.TRAIN_STEPS=2")
    train(corpus, resumed, "--gin.TRAIN_STEPS=4")
    return ref, resumed


def test_resume_is_bitwise(runs):
    ref, resumed = runs
    assert checkpoint_steps(ref) == [2, 4] and checkpoint_steps(resumed) == [2, 4]
    a, b = saved_state(ref, 4), saved_state(resumed, 4)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    start = saved_state(ref, 2)
    assert any(np.any(start[k] != a[k]) for k in a if k.startswith("params/audio"))
    # The frozen encoder is the initial one at every step.
    assert all(np.array_equal(start[k], a[k]) for k in a if k.startswith("params/text/encoder"))
    for tag in ("loss", "temperature", "audio_to_text_accuracy", "text_to_audio_accuracy",
                "eval/audio_to_text_r1", "eval/loss"):
        got = scalars(ref, tag)
        assert got and all(np.isfinite(v) for v in got.values()), tag


def test_cli_tokens_search_evaluate_and_bad_input(runs, corpus, tmp_path):
    ref, _ = runs
    ck = f"--checkpoint_dir={ref}"
    p = mulan(corpus, "fit_tokens", ck, "--codebook_size=4", "--passes=1")
    assert p.returncode == 0, p.stderr[-2000:]
    assert os.path.isfile(os.path.join(ref, "mulan_tokens", "codebooks.npy"))
    toks = [json.loads(mulan(corpus, "tokens", ck, "--text=a piece in D minor").stdout)["tokens"]
            for _ in range(2)]
    assert toks[0] == toks[1] and len(toks[0]) == 12
    folder = str(tmp_path / "folder")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(os.path.join(folder, f"clip{i}.wav"),
                 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * np.arange(3 * 24000) / 24000)
                 + 0.01 * rng.standard_normal(3 * 24000), 24000)
    sf.write(os.path.join(folder, "silent.wav"), np.zeros(3 * 24000), 24000)
    p = mulan(corpus, "search", ck, f"--folder={folder}", "--query=a piano piece")
    assert p.returncode == 0, p.stderr[-2000:]
    ranked = [line.split()[-1] for line in p.stdout.strip().splitlines()]
    assert sorted(os.path.basename(r) for r in ranked) == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert "silent.wav" in p.stderr  # skipped, said why
    p = mulan(corpus, "evaluate", ck, f"--corpus_dir={corpus[0]}", f"--out_dir={tmp_path}/ev",
              "--split=train")
    assert p.returncode == 0, p.stderr[-2000:]
    figures = json.load(open(tmp_path / "ev" / "mulan_eval.json"))
    assert figures["clips"] == 8 and figures["text_to_audio"]["chance_r@1"] == 1 / 8
    sf.write(str(tmp_path / "short.wav"), 0.3 * np.ones(12000), 24000)
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    long_caption = "a slow piece for organ " * 40
    bad = {("embed", "--text=", "--out=x.npy"): "no word piece",
           ("embed", f"--audio={folder}/silent.wav", "--out=x.npy"): "silent",
           ("embed", f"--audio={tmp_path}/short.wav", "--out=x.npy"): "shorter than",
           ("embed", f"--audio={tmp_path}/junk.wav", "--out=x.npy"): "cannot use this audio"}
    for args, words in bad.items():
        p = mulan(corpus, args[0], ck, *args[1:])
        assert p.returncode == 2 and words in p.stderr.lower(), (args, p.stderr[-500:])
        assert "Traceback" not in p.stderr
        assert sum(line.startswith("mufm.mulan: error") for line in p.stderr.splitlines()) == 1
    p = mulan(corpus, "embed", ck, f"--text={long_caption}", f"--out={tmp_path}/long.npy")
    assert p.returncode == 0 and "truncated to 64 tokens" in p.stderr
    assert np.load(tmp_path / "long.npy").shape == (1, 128)
