"""End to end through `python -m mufm.codec`: GAN training with warm-up, metrics and audio
summaries in TensorBoard, bitwise resume of the whole GAN state, and the checkpoint CLI
(encode / decode / roundtrip, bad input) on the trained run."""
import glob
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile as sf

from tests.train_runs import REPO, checkpoint_steps, path_name, scalars, train_env

pytestmark = pytest.mark.slow
GIN = "experiments/codec_synthetic_tiny.gin"


def run_codec(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "mufm.codec", *args], cwd=REPO, env=train_env(1),
                          capture_output=True, text=True, timeout=timeout)


def train(model_dir, *bindings):
    proc = run_codec("train", f"--gin_file={GIN}", f'--gin.MODEL_DIR="{model_dir}"',
                     "--gin.CheckpointConfig.save_every=3", "--gin.GANConfig.discriminator_start=2",
                     *bindings)
    assert proc.returncode == 0, proc.stderr[-3000:]


def saved_state(model_dir, step):
    tree = ocp.StandardCheckpointer().restore(os.path.join(model_dir, "checkpoints", str(step), "state"))
    return {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_runs")
    ref, resumed = str(root / "ref"), str(root / "resumed")
    train(ref, "--gin.TRAIN_STEPS=6", "--gin.RunConfig.eval_every=6", "--gin.RunConfig.log_every=3")
    train(resumed, "--gin.TRAIN_STEPS=3", "--gin.RunConfig.eval_every=0")
    train(resumed, "--gin.TRAIN_STEPS=6", "--gin.RunConfig.eval_every=0")
    return ref, resumed


def test_gan_resume_is_bitwise(runs):
    ref, resumed = runs
    assert checkpoint_steps(ref) == [3, 6] and checkpoint_steps(resumed) == [3, 6]
    a, b = saved_state(ref, 6), saved_state(resumed, 6)
    assert a.keys() == b.keys()
    groups = {k.split("/")[0] + "/" + k.split("/")[1] for k in a if "/" in k}
    # Both players' params and optimizer states, and the codebook EMA state, are in it.
    assert {"params/generator", "params/discriminator", "opt_state/generator",
            "opt_state/discriminator", "model_state/generator"} <= groups, groups
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert int(a["step"]) == 6 and int(a["nonfinite_skipped"]) == 0


def test_metrics_and_audio_summaries(runs):
    ref, _ = runs
    mel = scalars(ref, "mel")
    assert sorted(mel) == [3, 6] and all(np.isfinite(v) for v in mel.values())
    # Steps 1-2 are warm-up (no discriminator); the interval ending at step 6 is all GAN.
    assert scalars(ref, "discriminator_loss")[6] > 0
    # The mean of (0, 0, 1) over steps 1-3: an exact sum, one fp32 division (u relative).
    assert scalars(ref, "adversarial_scale")[3] == pytest.approx(1 / 3, rel=2.0 ** -24, abs=0)
    for tag in ("codebook/perplexity/level_00", "codebook/usage/level_03",
                "codebook/restarts/level_03", "eval/si_snr_db/0.3kbps",
                "eval/mel_distance/1.2kbps"):
        assert scalars(ref, tag), tag
    from tensorboard.backend.event_processing import event_accumulator
    tags = set()
    for path in glob.glob(os.path.join(ref, "events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags().get("tensors", []))
    assert {"real", "levels_01", "levels_04"} <= tags, sorted(tags)


def test_cli_roundtrip_encode_decode_and_bad_input(runs, tmp_path):
    ref, _ = runs
    t = np.arange(int(2.5 * 48_000)) / 48_000
    stereo = 0.3 * np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 440 * t)], -1)
    wav_in = str(tmp_path / "in.wav")
    sf.write(wav_in, stereo, 48_000, subtype="PCM_16")

    out = str(tmp_path / "out.wav")
    proc = run_codec("roundtrip", f"--checkpoint_dir={ref}", wav_in, out, "--chunk_seconds=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "coded as mono at 24000 Hz" in proc.stderr and "SI-SNR" in proc.stdout
    y, sr = sf.read(out)
    assert sr == 24_000 and y.shape == (60_000,)

    codes = str(tmp_path / "codes.npz")
    proc = run_codec("encode", f"--checkpoint_dir={ref}/checkpoints/6", wav_in, codes,
                     "--num_levels=2", "--chunk_seconds=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = np.load(codes)
    assert saved["codes"].shape == (125, 2) and int(saved["num_samples"]) == 60_000
    assert saved["codes"].min() >= 0 and saved["codes"].max() < 64
    out2 = str(tmp_path / "decoded.wav")
    proc = run_codec("decode", f"--checkpoint_dir={ref}", codes, out2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sf.read(out2)[0].shape == (60_000,)

    bad = str(tmp_path / "bad.wav")
    with open(bad, "w") as f:
        f.write("not audio at all")
    oob = str(tmp_path / "oob.npz")
    np.savez(oob, codes=np.full((10, 2), 64, np.int16), num_samples=4800, sample_rate=24000)
    for args, message in [
            (("roundtrip", f"--checkpoint_dir={ref}", bad, out), "cannot use this audio"),
            (("decode", f"--checkpoint_dir={ref}", oob, out), "codes must lie in [0, 64)"),
            (("encode", f"--checkpoint_dir={ref}", wav_in, codes, "--num_levels=9"), "1..4 levels"),
            (("encode", f"--checkpoint_dir={tmp_path}", wav_in, codes), "not a codec training run")]:
        proc = run_codec(*args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-1500:])
