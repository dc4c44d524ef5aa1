"""The evaluation job (mufm/eval/job.py, `python -m mufm.evaluate`) on the tiny random
cascade of tests/sample/conftest.py, with rendered scales as the reference clips: every
row present and bounded, the ceiling row right where the answer is known, same prompts
same figures."""
import glob
import json
import os

import numpy as np
import pytest
import soundfile as sf

from mufm.eval.prompts import Prompt, control_prompts, musiccaps_prompts, seed_of
from tests.eval.test_control import scale
from mufm.eval.control import parse_key

KEYS = ("D major", "E minor", "Bb major")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    out = []
    for i, key in enumerate(KEYS):
        path = str(root / f"ref{i}.wav")
        # Quick notes: the job's centred 1.5 s crop still holds half a scale and its chord.
        wave = scale(parse_key(key), note_s=0.1)
        sf.write(path, wave, 24_000)
        out.append(Prompt(id=f"p{i}", caption=f"{key}, 100 bpm, 4/4: a piece played by a piano.",
                          seed=seed_of(f"p{i}"), key=key, bpm=100.0, audio=path,
                          duration_s=len(wave) / 24_000))
    return out


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    from mufm.data.token_records import serialize, shard_name
    import tensorflow as tf

    root = str(tmp_path_factory.mktemp("tokens"))
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(os.path.join(root, shard_name("train", 0, 1))) as w:
        for i in range(3):
            w.write(serialize({"clip_id": f"c{i}", "split": "train", "caption": "x",
                               "attributes_json": "{}", "mulan": rng.integers(0, 16, 3),
                               "semantic": rng.integers(0, 8, 200),
                               "acoustic": rng.integers(0, 64, (400, 4)), "num_samples": 192_000}))
    return root


def test_prompt_sets(tmp_path):
    sweep = control_prompts()
    assert len(sweep) == 4 * 3 * 2 and len({p.id for p in sweep}) == len(sweep)
    assert sweep[0].caption == "C major, 70 bpm, 4/4: a piece played by a piano."
    assert sweep[0].seed == control_prompts()[0].seed  # fixed, not drawn
    csv = tmp_path / "caps.csv"
    csv.write_text('ytid,caption,aspect_list\nabc,"a mellow jazz trio","[\'jazz\']"\nxyz,,[]\n')
    with pytest.raises(ValueError, match="row 3 .*empty caption"):
        musiccaps_prompts(str(csv))
    assert musiccaps_prompts(str(csv), limit=1)[0].caption == "a mellow jazz trio"
    with pytest.raises(ValueError, match="spell it"):
        control_prompts(keys=("H major",))


def test_evaluation_rows_and_reproducibility(cascade, prompts, tokens_dir, tmp_path):
    from mufm.eval.job import evaluate, scalars

    out = str(tmp_path / "eval")
    results = evaluate(cascade, prompts, 1.5, out, tokens_dir=tokens_dir, batch=2,
                       memorization_n=20, memorization_k=2, log=lambda m: None)
    ctrl = results["control"]
    # The rendered scales are their keys: the ceiling row is exact.
    assert ctrl["reference"]["key_exact"] == 1.0 and ctrl["reference"]["key_n"] == 3
    for row in ("generated", "chance"):
        assert 0 <= ctrl[row]["key_weighted"] <= 1 and ctrl[row]["tempo_n"] == 3
    for row in ("generated", "reference"):
        assert -1 <= results["mcc"][row]["mismatched"] <= 1 and results["mcc"][row]["n"] == 3
    assert results["fad_mulan"]["generated"] >= 0 and results["fad_mulan"]["white_noise"] >= 0
    assert results["fad_musicnn"]["patches"] == 3  # one 3 s patch per 1.5 s clip (repeat-padded)
    kl = results["kl_musicnn_tags"]
    assert all(kl[k] >= 0 for k in ("generated", "another_reference", "white_noise"))
    mem = results["memorization"]
    assert mem["runs"] == 3 * (38 - 20 + 1) and 0 <= mem["near_fraction"] <= 1
    assert 0 <= results["semantic_entropy_bits"]["train"] <= 3  # 8 codes: at most 3 bits
    assert len(glob.glob(os.path.join(out, "wav", "[0-9]*.wav"))) == 3
    assert len(glob.glob(os.path.join(out, "wav", "ref_*.wav"))) == 3  # the report's references
    assert os.path.exists(os.path.join(out, "report.html"))
    assert glob.glob(os.path.join(out, "events.out.tfevents.*"))
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert [r["id"] for r in saved["rows"]] == ["p0", "p1", "p2"]
    assert "eval/control/reference/key_exact" in scalars(results)
    again = evaluate(cascade, prompts, 1.5, str(tmp_path / "again"), batch=2, log=lambda m: None)
    assert again["control"]["generated"] == ctrl["generated"]
    assert again["mcc"]["generated"] == results["mcc"]["generated"]


def test_cli_refuses_bad_flags_in_one_line(capsys, tmp_path):
    from mufm.evaluate.__main__ import main

    for flags, match in ((["--prompts=corpus"], "needs --corpus_dir"),
                         (["--prompts=bogus"], "use corpus, control"),
                         (["--seconds=0", "--prompts=control"], "--seconds > 0")):
        assert main([f"--out={tmp_path}", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err


def test_watch_evaluates_each_committed_checkpoint_once_across_restarts(runs, tmp_path):
    """A copy of the semantic stage's run gains checkpoints while the job watches it; a job
    killed while evaluating a step evaluates it again after its restart, and never a step
    it recorded."""
    import shutil

    from mufm.eval.watch import evaluated_steps, watch
    from mufm.generate.config import GenerateConfig
    from mufm.sample.random_runs import write_run
    from tests.tiny_runs import STAGE_GIN

    stage = str(tmp_path / "stage_semantic")
    shutil.copytree(runs["semantic"], stage)
    config = GenerateConfig(**{r: runs[r] for r in ("mulan", "coarse", "fine", "codec")},
                            semantic=stage)
    out, calls = str(tmp_path / "watch"), []

    def step_eval(cascade, step_out, step, fail_at=None):
        calls.append(step)
        if step == fail_at:
            raise KeyboardInterrupt  # the job killed mid-evaluation
        loaded_step = cascade.stages["semantic"][0].step
        tokens = cascade.generate_tokens(["a tune"], 0.5, seed=0, progress=False)
        return {"loaded_step": loaded_step, "tokens": int(tokens["semantic"].sum())}

    assert watch(config, "semantic", step_eval, out, once=True, log=lambda m: None) == [0]
    write_run(STAGE_GIN, stage, 3, bindings=['TOKENS_DIR="/nonexistent"'])
    with pytest.raises(KeyboardInterrupt):
        watch(config, "semantic", lambda c, o, s: step_eval(c, o, s, fail_at=3), out, once=True,
              log=lambda m: None)
    assert sorted(evaluated_steps(out)) == [0]
    assert watch(config, "semantic", step_eval, out, until_step=3, poll_s=0.1,
                 log=lambda m: None) == [3]
    assert calls == [0, 3, 3]
    done = evaluated_steps(out)
    assert {s: d["loaded_step"] for s, d in done.items()} == {0: 0, 3: 3}  # that step's weights
    assert watch(config, "semantic", step_eval, out, once=True, log=lambda m: None) == []
    with pytest.raises(ValueError, match="watch one of"):
        watch(config, "decoder", step_eval, out, once=True)
