"""Pre-tokenization (mufm/data/pretokenize.py) with the tiny codec, semantic and MuLan
models on a folder of synthetic clips, then each stage LM trained a few steps on the tokens
and evaluated; a killed job resumed writes the same shards; bad clips are reported; a
stage run resumed is bitwise the uninterrupted one.

The three models are run directories holding their initial weights (written as
tests/semantic/conftest.py does; what they weigh does not matter here, their shapes and
determinism do), the semantic k-means and MuLan RVQ fitted on the fly."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mufm.data import pretokenize as P
from mufm.data import token_records as R
from tests.semantic.conftest import (CODEC_GIN, SEMANTIC_GIN, _initialise_codebooks,
                                     write_train_state_run)
from tests.train_runs import REPO, checkpoint_steps, restored_params, train_env

SR = 24_000
MULAN_GIN = "experiments/mulan_corpus_tiny.gin"
SPLITS = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """ModelDirs of the tiny codec (4 levels x 64), semantic (K = 8) and MuLan (3 x 16)."""
    import jax.numpy as jnp

    from mufm.mulan.tokens import MuLanTokens
    from mufm.semantic.tokens import FitConfig, embed, fit_frames, save_centroids
    from mufm.train.restore import load

    root = tmp_path_factory.mktemp("models")
    codec = write_train_state_run(CODEC_GIN, str(root / "codec"), 1, _initialise_codebooks)
    semantic = write_train_state_run(SEMANTIC_GIN, str(root / "semantic"), 0)
    mulan = write_train_state_run(MULAN_GIN, str(root / "mulan"), 0)
    sem = load(semantic, family="semantic")
    wave = jnp.asarray(np.stack([harmonic(3.0, 110 * (k + 1)) for k in range(4)]))
    frames = np.asarray(embed(*sem.parts, wave, None, 1)).reshape(-1, sem.configs["model"].d_model)
    fit = fit_frames(frames, FitConfig(num_clusters=8, minibatch_frames=64, epochs=2, seed=0),
                     progress=False, log=lambda _: None)
    save_centroids(os.path.join(semantic, "semantic_tokens"), fit.state,
                   {"layer": 1, "num_clusters": 8, "step": 0, "model_dir": semantic,
                    "d_model": sem.configs["model"].d_model})
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((64, 128)).astype(np.float32)
    MuLanTokens.fit(emb / np.linalg.norm(emb, axis=1, keepdims=True), num_levels=3,
                    codebook_size=16).save(os.path.join(mulan, "mulan_tokens"))
    return P.ModelDirs(codec=codec, semantic=semantic, mulan=mulan)


def harmonic(seconds: float, f0: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3))).astype(np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """10 clips of 2.5-4.3 s with captions and pinned splits, one corrupt file, one NaN file."""
    d = tmp_path_factory.mktemp("audio")
    rows = []
    for k, split in enumerate(SPLITS):
        name = f"clip{k}.wav"
        sf.write(d / name, harmonic(2.5 + 0.2 * k, 110 + 30 * k), SR)
        rows.append({"file": name, "caption": f"a tone at {110 + 30 * k} Hz", "split": split})
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    nan = harmonic(3.0, 200.0)
    nan[100:200] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    rows += [{"file": "corrupt.wav", "caption": "broken", "split": "train"},
             {"file": "nan.wav", "caption": "not finite", "split": "train"}]
    with open(d / "captions.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return P.FolderSource(str(d), str(d / "captions.jsonl"))


@pytest.fixture(scope="module")
def tokens(models, folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tokens") / "tiny")
    manifest = P.run(folder, models, out, clips_per_shard=2, progress=False, log=lambda _: None)
    return out, manifest


def shard_bytes(out):
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))
            if n.endswith(R.SHARD_SUFFIX)}


def test_job_writes_aligned_tokens_manifest_stats_and_reports_bad_files(tokens, models):
    out, manifest = tokens
    assert manifest["splits"]["train"]["clips"] == 6
    assert manifest["splits"]["validation"]["clips"] == 2 and manifest["splits"]["test"]["clips"] == 2
    assert manifest["streams"]["acoustic"] == {"levels": 4, "codebook_size": 64, "hz": 50}
    assert manifest["models"]["codec"]["step"] == 1
    report = json.load(open(os.path.join(out, P.REPORT)))
    assert report["failed"] == 2, report  # the corrupt file and the NaN file, nothing fatal
    assert {f["clip_id"] for f in report["failures"]} == {"corrupt.wav", "nan.wav"}
    records = [r for n in sorted(os.listdir(out)) if n.endswith(R.SHARD_SUFFIX)
               for r in R.read_records(os.path.join(out, n))]
    assert len(records) == 10
    for r in records:
        n = int(r["num_samples"])
        assert r["semantic"].shape == (n // 960,) and r["acoustic"].shape == (-(-n // 480), 4)
        assert r["mulan"].shape == (3,) and r["caption"].startswith("a tone")
        assert r["semantic"].max() < 8 and r["acoustic"].max() < 64 and r["mulan"].max() < 16
    stats = json.load(open(os.path.join(out, P.STATS)))
    counts = np.load(os.path.join(out, P.COUNTS))
    assert counts["train/acoustic"].shape == (4, 64)
    total_train = sum(len(x["semantic"]) for x in records if x["split"] == "train")
    assert counts["train/semantic"].sum() == total_train
    assert stats["train"]["semantic"]["levels"][0]["tokens"] == total_train
    assert 0 <= stats["train"]["semantic"]["levels"][0]["entropy_bits"] <= 3.0  # log2(8)


def test_tokens_are_the_tokenizers_output(tokens, models, folder):
    out, _ = tokens
    tok = P.ClipTokenizer(models)
    wave = sf.read(os.path.join(folder.root, "clip0.wav"), dtype="float32")[0]
    want = tok.tokenize(wave)
    got = next(r for n in os.listdir(out) if n.startswith("train") and n.endswith(R.SHARD_SUFFIX)
               for r in R.read_records(os.path.join(out, n)) if r["clip_id"].startswith("clip0.wav@"))
    for k in ("mulan", "semantic", "acoustic"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_killed_job_resumed_gives_the_same_shards(tokens, models, folder, tmp_path):
    out, _ = tokens
    want = shard_bytes(out)
    resumed = str(tmp_path / "resumed")
    shutil.copytree(out, resumed)
    # What a kill leaves: finished shards, a half-written .tmp, shards without markers.
    names = sorted(want)
    lost = [[n for n in names if n.startswith("train")][1], [n for n in names if n.startswith("test")][0]]
    for name in lost:
        split, index = name.split("-")[0], int(name.split("-")[1])
        os.remove(os.path.join(resumed, P.MARKERS, f"{split}-{index:05d}.json"))
        with open(os.path.join(resumed, name + ".tmp"), "wb") as f:
            f.write(b"half a shard")
    os.remove(os.path.join(resumed, lost[0]))
    kept = os.path.join(resumed, names[-1])  # a validation shard
    mtime = os.stat(kept).st_mtime_ns
    logs = []
    P.run(folder, models, resumed, clips_per_shard=2, progress=False, log=logs.append)
    assert any("2 to do" in line for line in logs), logs
    assert shard_bytes(resumed) == want
    assert os.stat(kept).st_mtime_ns == mtime  # finished shards are not redone
    assert not [n for n in os.listdir(resumed) if n.endswith(".tmp")]
    # Another plan in the same directory is refused.
    with pytest.raises(P.PlanMismatchError, match="clips_per_shard"):
        P.run(folder, models, resumed, clips_per_shard=3, progress=False, log=lambda _: None)


def test_a_clip_that_fails_to_tokenize_is_counted(models, tmp_path):
    class Clips:  # a source whose second clip MuLan refuses (shorter than its minimum)
        def clips(self, split, lo, hi, report):
            yield {"clip_id": "ok", "caption": "c", "attributes_json": "{}", "waveform": harmonic(2.0, 220)}
            yield {"clip_id": "short", "caption": "c", "attributes_json": "{}", "waveform": harmonic(0.2, 220)}

    os.makedirs(tmp_path / P.MARKERS)
    marker = P.tokenize_shard(P.ShardSpec("train", 0, 1, 0, 2), Clips(), P.ClipTokenizer(models),
                              str(tmp_path))
    assert marker["clips"] == 1
    assert [f["clip_id"] for f in marker["failed"]] == ["short"]
    assert "shorter than" in marker["failed"][0]["detail"]


def test_dataflow_options_parse_and_the_job_graph_builds(models, folder, tmp_path):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                      SetupOptions, StandardOptions, WorkerOptions)

    flags = ["--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
             "--temp_location=gs://bucket/tmp", "--setup_file=./setup.py",
             "--machine_type=n2-standard-8", "--max_num_workers=16"]
    opts = PipelineOptions(flags)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    assert opts.view_as(GoogleCloudOptions).project == "my-project"
    assert opts.view_as(GoogleCloudOptions).temp_location == "gs://bucket/tmp"
    assert opts.view_as(WorkerOptions).machine_type == "n2-standard-8"
    assert opts.view_as(WorkerOptions).max_num_workers == 16
    assert opts.view_as(SetupOptions).setup_file == "./setup.py"
    specs = P.plan_shards({"train": 5, "test": 1}, 2)
    pipeline = beam.Pipeline(runner="DirectRunner", options=opts)
    P.build_pipeline(pipeline, specs, folder, models, "gs://bucket/tokens")
    names = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
    assert {"Shards", "Spread", "Tokenize"} <= names


# -- the stages on the tokens ----------------------------------------------------------------
STAGES = {
    "semantic": ["--gin.STAGE_TASK='mufm_tokens_semantic'",
                 "--gin.TokenTaskRegistration.layout=@semantic_stage()"],
    "coarse": ["--gin.STAGE_TASK='mufm_tokens_coarse'",
               "--gin.TokenTaskRegistration.layout=@coarse_stage()"],
    "fine": ["--gin.STAGE_TASK='mufm_tokens_fine'", "--gin.TokenTaskRegistration.layout=@fine_stage()",
             "--gin.TokenTaskRegistration.conditioning_dropout=0.0"],
}


def train_stage(model_dir, tokens_dir, stage, *bindings):
    cmd = [sys.executable, "-m", "mufm.train", "--gin_file=experiments/stage_tiny.gin",
           f'--gin.MODEL_DIR="{model_dir}"', f'--gin.TOKENS_DIR="{tokens_dir}"', *STAGES[stage],
           *bindings]
    proc = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def stage_runs(tokens, tmp_path_factory):
    """Each stage trained 4 steps on the tiny tokens."""
    out, _ = tokens
    root = tmp_path_factory.mktemp("stages")
    runs = {}
    for stage in sorted(STAGES):
        runs[stage] = str(root / stage)
        train_stage(runs[stage], out, stage)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_trains_on_the_tokens_and_evaluates(stage, stage_runs):
    from mufm.lm.evaluate import evaluate_run, format_table

    run = stage_runs[stage]
    assert checkpoint_steps(run)[-1] == 4
    summary = evaluate_run(run, split="test", progress=False)
    target = {"semantic": {"semantic"}, "coarse": {"acoustic_0", "acoustic_1"},
              "fine": {"acoustic_2", "acoustic_3"}}[stage]
    assert {r["stream"] for r in summary["levels"]} == target
    for r in summary["levels"]:
        assert r["tokens"] > 0 and 0 <= r["accuracy"] <= 1 and 0 <= r["unigram_accuracy"] <= 1
        # Perplexities of distributions over the level's codebook: finite and >= 1 (after
        # 4 steps on a few train clips the model may well be worse than uniform on test).
        assert 1 <= r["perplexity"] < np.inf and 1 <= r["unigram_perplexity"] < np.inf
        # Persistence (the code one frame back) and its mixture with the unigram, whose
        # repeat weight is chosen on the data: never more perplexed than the unigram alone
        # by more than the grid's smallest weight costs (1 / (1 - 0.02)).
        assert 0 <= r["repeat_accuracy"] <= 1
        assert 1 <= r["repeat_perplexity"] <= r["unigram_perplexity"] / 0.98 + 1e-9
    assert summary["tokens"] == sum(r["tokens"] for r in summary["levels"])
    table = format_table(summary)
    assert all(r["stream"] in table for r in summary["levels"])


@pytest.mark.slow
def test_stage_resume_is_bitwise(tokens, stage_runs, tmp_path):
    out, _ = tokens
    resumed = str(tmp_path / "resumed")
    train_stage(resumed, out, "coarse", "--gin.TRAIN_STEPS=2")
    train_stage(resumed, out, "coarse")
    a, b = restored_params(stage_runs["coarse"], 4), restored_params(resumed, 4)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_missing_tokens_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mufm.train", "--gin_file=experiments/stage_tiny.gin",
         f'--gin.MODEL_DIR="{tmp_path / "run"}"', f'--gin.TOKENS_DIR="{tmp_path / "nothing"}"'],
        cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "mufm.data.pretokenize" in proc.stderr


def test_stage_mixture_of_token_tasks(tokens):
    import seqio

    from mufm.data import token_tasks as T
    from mufm.data.pipeline import DataConfig, host_batches
    from mufm.lm import layouts as L

    out, _ = tokens
    layout = L.semantic_stage(50, mulan_levels=3, mulan_codes=16, semantic_codes=8)
    for name, shuffle in (("t_real", False), ("t_shuffled", True)):
        T.register_token_task(name, out, layout, shuffle_mulan=shuffle)
    T.register_stage_mixture("t_mix", [("t_real", 1.0), ("t_shuffled", 1.0)])
    cfg = DataConfig(mixture_or_task_name="t_mix", sequence_length=128, batch_size=4,
                     task_modules=["mufm.data.token_tasks"], stream_names=layout.stream_names)
    batch = next(host_batches(cfg, split="train", shuffle=True))
    assert batch["decoder_target_tokens"].shape == (4, 128)
    ids = batch["decoder_target_tokens"][batch["decoder_loss_weights"] > 0]
    semantic = layout.streams[-1]
    assert ((ids >= semantic.offset) & (ids < semantic.offset + semantic.size)).all()
    for name in ("t_real", "t_shuffled"):
        seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove("t_mix")
