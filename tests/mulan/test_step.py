"""The MuLan train step through the trainer's program: a frozen text encoder stays put and
keeps no optimizer moments while everything else moves; fine-tuning moves it; 8 devices
give the 1-device step; the pretrained MiniLM weights land in the sharded state."""
import dataclasses

import jax
import numpy as np
import pytest

from mufm.data.pipeline import DataConfig
from mufm.mulan.model import MuLanConfig
from mufm.mulan.task import MuLanTask
from mufm.mulan.text import TextTowerConfig
from mufm.parallel.logical import sharding_context
from mufm.parallel.mesh import MeshConfig
from mufm.train.loop import RunConfig, build_program
from mufm.train.optim import OptimizerConfig
from tests.mulan.common import AUDIO, MODEL, U

OPT = OptimizerConfig(schedule="constant", warmup_steps=0, learning_rate=1e-3, weight_decay=0.0,
                      clip_norm=None)
B, L = 8, 16


def task_for(model=MODEL):
    return MuLanTask(model=model, optimizer=OPT, caption_tokens=L,
                     data=DataConfig(sequence_length=AUDIO.window_samples, batch_size=B))


def program_for(task, devices, mesh=MeshConfig(ici_parallelism=(-1, 1, 1))):
    return build_program(task, mesh, RunConfig(model_dir="unused", train_steps=10), devices=devices)


def batch(program, task):
    rng = np.random.default_rng(0)
    n = AUDIO.window_samples
    t = np.arange(n) / 24_000
    wave = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 800, (B, 1)) * t)
            + 0.05 * rng.standard_normal((B, n))).astype(np.float32)
    lengths = np.full((B,), n, np.int32)
    lengths[1] = n // 2
    ids, mask = task.tokenize([f"a piece in {k} major played by a {i}" for k, i in
                               zip("CDEFGABC", ["piano", "flute", "violin", "organ"] * 2)])
    host = {"waveform": wave, "waveform_length": lengths, "text_ids": ids, "text_mask": mask}
    return {k: jax.device_put(v, program.batch_shardings[k]) for k, v in host.items()}


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def step_once(program, task):
    with sharding_context(program.mesh, program.rules):
        state = program.initialize(0)
        before = flat(host(state.params))
        state, m = program.step_at(0)(state, batch(program, task))
        return before, flat(host(state.params)), host(m), state


@pytest.fixture(scope="module")
def frozen_run():
    task = task_for()
    program = program_for(task, jax.devices()[:1])
    return task, program, step_once(program, task)


def test_frozen_encoder_stays_and_the_rest_moves(frozen_run):
    _, _, (before, after, m, state) = frozen_run
    assert np.isfinite(m["loss"]) and 0 < m["loss"] < 2 * np.log(B)
    np.testing.assert_allclose(m["temperature"], 0.07, rtol=0.02)  # one Adam step of 1e-3
    for k in before:
        moved = np.any(before[k] != after[k])
        assert moved != k.startswith("text/encoder/"), k
    assert any(k.startswith("text/projection") for k in before)
    # No Adam moments are kept for the frozen encoder (set_to_zero has no state).
    opt = flat(host(state.opt_state))
    assert opt and not any("encoder" in k for k in opt)


def test_fine_tuning_moves_the_encoder():
    model = dataclasses.replace(MODEL, text=dataclasses.replace(MODEL.text, frozen=False))
    task = task_for(model)
    before, after, _, _ = step_once(program_for(task, jax.devices()[:1]), task)
    assert all(np.any(before[k] != after[k]) for k in before
               if k.startswith("text/encoder/layers") and k.endswith("kernel"))


def test_eight_device_step_matches_one_device(frozen_run):
    task, _, (_, p1, m1, _) = frozen_run
    eight = program_for(task, jax.devices()[:8], MeshConfig(ici_parallelism=(2, 2, 2)))
    _, p8, m8, _ = step_once(eight, task)
    # The loss: B-term logsumexps of D = 128-term dot products, after the towers' matmuls
    # (frames x d_ff at most): each within 2 n u of another order (Higham 3.1).
    terms = 2 * (128 + B + AUDIO.num_frames(AUDIO.window_samples) * AUDIO.d_ff)
    for k in ("loss", "audio_to_text_loss", "text_to_audio_loss"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=terms * U, atol=terms * U, err_msg=k)
    # As in tests/semantic/test_step.py: the gradient norm runs back through
    # ln(mel + 1e-5), which amplifies rounding; a missing or doubled all-reduce moves it 2x.
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-2)
    # Adam's first update is lr * sign(g): near-zero gradients may flip between orders.
    a = np.concatenate([p8[k].ravel() for k in sorted(p8)])
    b = np.concatenate([p1[k].ravel() for k in sorted(p1)])
    assert np.isclose(a, b, rtol=1e-4, atol=1e-6).mean() > 0.99
    assert np.abs(a - b).max() <= 2 * OPT.learning_rate + 1e-6


def test_pretrained_minilm_is_placed_into_the_sharded_state():
    """The real tower (22.6M parameters) with the tiny audio tower, on 8 devices: after
    initialising, every encoder parameter is exactly the file's array."""
    from flax import nnx

    from mufm.mulan.text import MiniLM, minilm_arrays

    model = MuLanConfig(audio=AUDIO, text=TextTowerConfig())
    task = task_for(model)
    program = program_for(task, jax.devices()[:8], MeshConfig(ici_parallelism=(2, 2, 2)))
    with sharding_context(program.mesh, program.rules):
        state = program.initialize(0)
    enc = state.params["text"]["encoder"]
    assert enc["word_embed"]["embedding"].sharding == program.shardings.params["text"]["encoder"][
        "word_embed"]["embedding"]
    want = minilm_arrays(nnx.eval_shape(lambda: MiniLM(model.text.minilm, rngs=nnx.Rngs(0))))
    got = flat(host(enc))
    assert len(got) == len(want)
    for path, value in want.items():
        np.testing.assert_array_equal(got["/".join(str(k) for k in path)], value)
