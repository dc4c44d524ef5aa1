"""The scratch text tower: the sentencepiece fit (deterministic, saved in the run, reused),
tokenisation through the shared `tokenize` rules, the encoder (shapes, logical axes,
padding invariance), a train step through the trainer's program that moves every scratch
parameter, and a trained run that reloads through MuLan.load with the same embeddings."""
import dataclasses
import os

import jax
import numpy as np
import pytest
import sentencepiece
from flax import nnx
from jax.sharding import PartitionSpec

from mufm.data.pipeline import DataConfig
from mufm.gin_flags import GinConfigError
from mufm.mulan import spm, tokenizer
from mufm.mulan.embed import MuLan
from mufm.mulan.model import MuLanConfig
from mufm.mulan.task import MuLanTask
from mufm.mulan.text import ScratchTextConfig, TextTower, TextTowerConfig
from mufm.parallel.logical import named_shardings, sharding_context
from mufm.parallel.mesh import DEFAULT_RULES, MeshConfig, build_mesh
from mufm.train.checkpoint import CheckpointConfig, Checkpointer
from mufm.train.loop import RunConfig, build_program
from mufm.train.optim import OptimizerConfig
from mufm.train.restore import write_model_config
from tests.mulan.common import AUDIO, U

# Corpus-style captions: enough distinct words for a 64-piece BPE model.
CAPTIONS = sorted({f"A {tempo} {form} in {key} {mode} for {ins}, {bpm} bpm."
                   for tempo in ("slow", "fast", "lively", "calm")
                   for form in ("waltz", "chorale", "air", "reel")
                   for key in "CDEFGAB" for mode in ("major", "minor")
                   for ins, bpm in (("piano", 60), ("violin", 120), ("flute", 90),
                                    ("organ and choir", 72))})
SCRATCH = ScratchTextConfig(vocab_size=64, model_type="bpe", d_model=16, num_layers=2,
                            num_heads=2, d_ff=32, max_length=64, dropout_rate=0.1)
TEXT = TextTowerConfig(kind="scratch", scratch=SCRATCH, frozen=False, pretrained=False)
MODEL = MuLanConfig(audio=AUDIO, text=TEXT)
OPT = OptimizerConfig(schedule="constant", warmup_steps=0, learning_rate=1e-3, weight_decay=0.0,
                      clip_norm=None)
B, L = 8, 24


@pytest.fixture(scope="module")
def spm_bytes():
    return spm.fit(CAPTIONS, SCRATCH)


def fitted_dir(root, model: bytes) -> str:
    spm.write(model, spm.spm_path(str(root)))
    return str(root)


# -- the fit ----------------------------------------------------------------------------------
def test_fit_is_deterministic_whatever_the_input_order(spm_bytes):
    again = spm.fit(list(reversed(CAPTIONS)), SCRATCH)
    assert again == spm_bytes
    a, b = (sentencepiece.SentencePieceProcessor(model_proto=m) for m in (spm_bytes, again))
    assert a.get_piece_size() == SCRATCH.vocab_size
    assert [a.id_to_piece(i) for i in range(64)] == [b.id_to_piece(i) for i in range(64)]
    assert a.encode(CAPTIONS) == b.encode(CAPTIONS)
    # The fixed special ids the tokenizer relies on (pad 0 for every backend).
    assert (a.pad_id(), a.unk_id(), a.bos_id(), a.eos_id()) == (0, 1, 2, 3)


def test_fit_errors_name_the_setting():
    with pytest.raises(ValueError, match="vocab_size=5000 .* at most"):
        spm.fit(CAPTIONS, dataclasses.replace(SCRATCH, vocab_size=5000))
    with pytest.raises(ValueError, match="no non-empty caption"):
        spm.fit(["", " \t"], SCRATCH)


def test_saved_model_must_match_the_config(tmp_path, spm_bytes):
    d = fitted_dir(tmp_path, spm_bytes)
    spm.check_fits_config(spm.spm_path(d), SCRATCH)
    with pytest.raises(ValueError, match="vocab_size=64.*128"):
        spm.check_fits_config(spm.spm_path(d), dataclasses.replace(SCRATCH, vocab_size=128))


# -- tokenisation -------------------------------------------------------------------------------
def test_captions_round_trip_and_follow_the_shared_rules(tmp_path, spm_bytes):
    d = fitted_dir(tmp_path, spm_bytes)
    kw = TEXT.tokenizer_kwargs(d)
    sp = sentencepiece.SentencePieceProcessor(model_file=spm.spm_path(d))
    ids, mask = tokenizer.tokenize(CAPTIONS[:5], **kw)
    assert ids.shape[1] % 16 == 0 and ids.dtype == mask.dtype == np.int32
    for row, m, caption in zip(ids, mask, CAPTIONS):
        kept = row[m > 0].tolist()
        assert kept[0] == 2 and kept[-1] == 3 and 1 not in kept  # bos ... eos, no unk
        assert sp.decode(kept[1:-1]) == caption
        assert np.all(row[m == 0] == 0)
    # Truncation: the first length - 2 pieces, then eos.
    short, smask = tokenizer.tokenize(CAPTIONS[:5], length=8, **kw)
    assert short.shape == (5, 8) and smask.all()
    for row, caption in zip(short, CAPTIONS):
        assert row.tolist() == [2] + sp.encode(caption)[:6] + [3]
    for empty in ("", "   ", "\x00\t"):
        with pytest.raises(ValueError, match="caption 1 .* no word piece"):
            tokenizer.tokenize(["a waltz", empty], **kw)


def test_scratch_tokenizer_needs_the_run(tmp_path):
    with pytest.raises(ValueError, match="MODEL_DIR"):
        TEXT.tokenizer_kwargs(None)
    with pytest.raises(FileNotFoundError, match="no sentencepiece model"):
        tokenizer.tokenize(["a waltz"], **TEXT.tokenizer_kwargs(str(tmp_path)))


def test_scratch_config_refuses_frozen_and_pretrained():
    with pytest.raises(ValueError, match="frozen = False"):
        TextTowerConfig(kind="scratch", scratch=SCRATCH)  # MiniLM's defaults: True, True
    with pytest.raises(ValueError, match="kind='bert'"):
        TextTowerConfig(kind="bert")


# -- the encoder --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tower():
    return TextTower(TEXT, nnx.Rngs(0))


def test_tower_shapes_and_unit_norm(tower, tmp_path, spm_bytes):
    ids, mask = tower.tokenize(CAPTIONS[:3], model_dir=fitted_dir(tmp_path, spm_bytes))
    e = np.asarray(nnx.jit(lambda m, i, k: m(i, k))(tower, ids, mask))
    assert e.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    pooled = tower.encoder(ids, mask)
    assert pooled.shape == (3, SCRATCH.d_model)
    with pytest.raises(ValueError, match="max_length=64"):
        tower.encoder(np.zeros((1, 65), np.int32), np.ones((1, 65), np.int32))


def test_every_parameter_has_logical_axes_that_resolve(tower):
    flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(tower, nnx.Param))}
    axes = {name: v.get_metadata()["out_sharding"] for name, v in flat.items()}
    assert all(axes[n] is not None and len(axes[n]) == np.ndim(v.get_value())
               for n, v in flat.items())
    assert axes["encoder/word_embed/embedding"] == ("vocab", "embed")
    assert axes["encoder/position_embed"] == ("length", "embed")
    assert axes["encoder/layers/0/attention/query/kernel"] == ("embed", "heads", "kv")
    assert axes["encoder/layers/1/mlp/wi/kernel"] == ("embed", "mlp")
    assert axes["projection/kernel"] == ("embed", "joint")
    mesh = build_mesh(MeshConfig(ici_parallelism=(2, 2, 2)))
    sh = named_shardings(axes, {k: v.get_value() for k, v in flat.items()}, mesh, DEFAULT_RULES)
    assert sh["encoder/word_embed/embedding"].spec == PartitionSpec("tensor", "fsdp")
    # Fully trainable: the trainer's filter is every parameter.
    n = lambda f: len(nnx.to_flat_state(nnx.state(tower, f)))
    assert n(tower.trainable) == n(nnx.Param) == len(flat)


# fp32, mask-invariant up to reduction order: padded keys enter the softmax as exact zeros
# (exp(-1e9 - max) underflows), but a longer row can change XLA's summation blocking. Every
# reduction is a sum of at most n = max(length, d_ff) = 64 terms, each within n u relative
# of another order (Higham 3.1), through 2 layers of ~3 reductions and the pooling: bound
# 8 n u ~ 3e-5 on unit-norm components. Ignoring the mask moves the embedding far more
# (asserted), so the test sees a broken mask.
PAD_TOL = 8 * 64 * U


def test_pad_tokens_do_not_change_the_embedding(tower, tmp_path, spm_bytes):
    d = fitted_dir(tmp_path, spm_bytes)
    fn = nnx.jit(lambda m, i, k: m(i, k))
    ids, mask = tower.tokenize(CAPTIONS[:2], model_dir=d)
    long_ids, long_mask = tower.tokenize(CAPTIONS[:2], length=64, model_dir=d)
    assert long_ids.shape[1] > ids.shape[1]
    short, long = np.asarray(fn(tower, ids, mask)), np.asarray(fn(tower, long_ids, long_mask))
    np.testing.assert_allclose(short, long, atol=PAD_TOL, rtol=0)
    # Pad ids are garbage to the tower: different pad ids, same embedding.
    junk = np.where(long_mask > 0, long_ids, 7).astype(np.int32)
    np.testing.assert_allclose(np.asarray(fn(tower, junk, long_mask)), long, atol=PAD_TOL, rtol=0)
    unmasked = np.asarray(fn(tower, long_ids, np.ones_like(long_mask)))
    assert np.abs(unmasked - long).max() > 100 * PAD_TOL


# -- training through the trainer's program -----------------------------------------------------
def task_for(model_dir: str, model=MODEL) -> MuLanTask:
    return MuLanTask(model=model, optimizer=OPT, caption_tokens=L, model_dir=model_dir,
                     data=DataConfig(sequence_length=AUDIO.window_samples, batch_size=B))


def run_for(model_dir: str) -> RunConfig:
    return RunConfig(model_dir=model_dir, train_steps=10)


def host_batch(task) -> dict:
    rng = np.random.default_rng(0)
    n = AUDIO.window_samples
    t = np.arange(n) / 24_000
    wave = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 800, (B, 1)) * t)
            + 0.05 * rng.standard_normal((B, n))).astype(np.float32)
    ids, mask = task.tokenize(CAPTIONS[::len(CAPTIONS) // B][:B])
    return {"waveform": wave, "waveform_length": np.full((B,), n, np.int32),
            "text_ids": ids, "text_mask": mask}


def flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spm_bytes):
    """One step of the scratch MuLan through the trainer's program, saved as a run."""
    d = fitted_dir(tmp_path_factory.mktemp("scratch_run"), spm_bytes)
    task = task_for(d)
    program = build_program(task, MeshConfig(ici_parallelism=(-1, 1, 1)), run_for(d),
                            devices=jax.devices()[:1])
    host = host_batch(task)
    with sharding_context(program.mesh, program.rules):
        state = program.initialize(0)
        before = flat(state.params)
        state, metrics = program.step_at(0)(state, program.global_batch(host))
        text = np.asarray(program.evals["embed"](state, program.global_batch(host))["text"])
    ckpt = Checkpointer(d, CheckpointConfig(save_every=1, keep=1, async_save=False))
    ckpt.save(1, state, {"batches": 1, "task": task.data.mixture_or_task_name}, force=True)
    ckpt.close()
    write_model_config(d, task)
    return task, d, before, flat(state.params), jax.device_get(metrics), host, text


def test_a_step_moves_every_scratch_parameter(trained):
    _, _, before, after, metrics, _, _ = trained
    assert np.isfinite(metrics["loss"])
    text = [k for k in before if k.startswith("text/")]
    # word + position tables, 2 layers x (2 LayerNorms x 2, q k v out, wi wo), the final
    # LayerNorm, the projection's kernel and bias.
    assert any("layers/1/mlp/wo" in k for k in text) and len(text) == 2 + 2 * 10 + 2 + 2
    # Adam's first update is lr * sign(g): a parameter moves iff some gradient reached it.
    assert [k for k in text if not np.any(before[k] != after[k])] == []


def test_resumed_task_reuses_the_saved_model(trained, monkeypatch):
    task, d, *_ = trained
    path = spm.spm_path(d)
    stamp = (os.stat(path).st_mtime_ns, open(path, "rb").read())

    def refit():
        raise AssertionError("refitted although the run holds its sentencepiece model")

    monkeypatch.setattr(MuLanTask, "train_captions", lambda self: refit())
    task.tokenize(CAPTIONS[:2])
    assert (os.stat(path).st_mtime_ns, open(path, "rb").read()) == stamp


def test_fresh_run_fits_on_the_train_captions(tmp_path, monkeypatch, spm_bytes):
    seen = []
    monkeypatch.setattr(MuLanTask, "train_captions",
                        lambda self: seen.append(1) or list(reversed(CAPTIONS)))
    task = task_for(str(tmp_path))
    ids, _ = task.tokenize(CAPTIONS[:2])
    assert seen == [1] and ids.shape == (2, L)
    assert open(spm.spm_path(str(tmp_path)), "rb").read() == spm_bytes  # the same fit
    task.tokenize(CAPTIONS[2:4])
    assert seen == [1]  # fitted once


def test_scratch_task_needs_its_model_dir(tmp_path):
    with pytest.raises(GinConfigError, match="MuLanTask.model_dir = %MODEL_DIR"):
        task_for("").validate(run_for(str(tmp_path)))
    with pytest.raises(GinConfigError, match="is not the run's"):
        task_for(str(tmp_path / "elsewhere")).validate(run_for(str(tmp_path)))
    task_for(str(tmp_path) + "/").validate(run_for(str(tmp_path)))


def test_trained_run_reloads_from_its_model_dir(trained, tmp_path):
    import shutil

    task, d, _, _, _, host, text = trained
    moved = shutil.copytree(d, str(tmp_path / "moved"))  # MODEL_DIR alone, anywhere
    mulan = MuLan.load(moved)
    captions = CAPTIONS[::len(CAPTIONS) // B][:B]
    ids, mask = mulan.tokenize(captions)
    np.testing.assert_array_equal(ids, host["text_ids"])
    np.testing.assert_array_equal(mask, host["text_mask"])
    got = mulan.embed_text(captions, batch=B)
    # Same parameters, same program on one device: equal up to XLA's choices between two
    # compilations of the same shapes (PAD_TOL's reasoning).
    np.testing.assert_allclose(got, text, atol=PAD_TOL, rtol=0)
    # The checkpoint, not a fresh initialisation, is what was loaded: untrained parameters
    # are far away.
    fresh = TextTower(TEXT, nnx.Rngs(0))
    e0 = np.asarray(fresh(ids, mask))
    assert np.abs(e0 - got).max() > 100 * PAD_TOL
    sp = sentencepiece.SentencePieceProcessor(model_file=spm.spm_path(moved))
    probe = captions + ["A fast reel.", " ".join(CAPTIONS[:4])]
    want = [len(sp.encode(c)) + 2 > L for c in probe]
    assert mulan.truncated(probe) == want and want[-2:] == [False, True]
    os.remove(spm.spm_path(moved))
    with pytest.raises(FileNotFoundError, match="sentencepiece model"):
        MuLan.load(moved)


def test_train_captions_read_the_whole_train_split_up_to_the_cap(tmp_path):
    """The real reader (seqio, unsharded) on the synthetic audio task, whose train split is
    endless: it stops at max_fit_captions."""
    text = dataclasses.replace(TEXT, scratch=dataclasses.replace(SCRATCH, max_fit_captions=5))
    task = dataclasses.replace(
        task_for(str(tmp_path), MuLanConfig(audio=AUDIO, text=text)),
        data=DataConfig(mixture_or_task_name="mufm_synthetic_audio", sequence_length=2400,
                        batch_size=B, input_shards=4, task_modules=("mufm.data.synthetic_audio",)))
    assert task.train_captions() == ["synthetic harmonic notes"] * 5
