"""Every gin file under configs/ parses; bad flags fail before compute, naming the culprit."""
import dataclasses
import glob
import os

import pytest

from mufm import gin_flags
from mufm.gin_flags import CONFIGS_DIR, GinConfigError

GIN_FILES = sorted(os.path.relpath(p, CONFIGS_DIR)
                   for p in glob.glob(os.path.join(CONFIGS_DIR, "**", "*.gin"), recursive=True))


def test_configs_folder_is_found():
    assert len(GIN_FILES) >= 8, GIN_FILES
    for needed in ("models/tiny.gin", "models/small.gin", "models/base.gin", "models/musiclm.gin",
                   "mesh/cpu.gin", "mesh/cpu8.gin", "runs/lm.gin",
                   "experiments/synthetic_tiny.gin"):
        assert needed in GIN_FILES


@pytest.mark.parametrize("path", GIN_FILES)
def test_gin_file_parses(path):
    gin_flags.parse([path], [], finalize=False)


def test_experiment_binds_required_macros():
    import gin

    from mufm.train.loop import RunConfig

    gin_flags.parse(["experiments/synthetic_tiny.gin"], ['MODEL_DIR="/tmp/x"', "TRAIN_STEPS=7"])
    run = RunConfig()
    assert (run.model_dir, run.train_steps) == ("/tmp/x", 7)
    gin.clear_config()


def test_musiclm_model_is_paper_sized():
    import gin
    from mufm.lm.model import LMConfig, param_count

    gin_flags.parse(["models/musiclm.gin"], [], finalize=False)
    cfg = LMConfig()
    assert (cfg.num_layers, cfg.num_heads, cfg.d_model, cfg.d_ff) == (24, 16, 1024, 4096)
    assert 400e6 < param_count(cfg)["total"] < 460e6
    gin.clear_config()


def test_base_model_matches_issue():
    import gin
    from mufm.lm.model import LMConfig

    gin_flags.parse(["models/base.gin"], [], finalize=False)
    cfg = LMConfig()
    assert (cfg.num_layers, cfg.num_heads, cfg.d_model, cfg.d_ff) == (8, 8, 512, 2048)
    assert 900 <= cfg.vocab_size <= 1100
    gin.clear_config()


def test_missing_gin_file_is_named():
    with pytest.raises(GinConfigError, match="nope.gin"):
        gin_flags.parse(["experiments/nope.gin"], [])


def _main_errors(tmp_path, capsys, *flags):
    from mufm.train.__main__ import main

    model_dir = tmp_path / "run"
    rc = main(["--gin_file=experiments/synthetic_tiny.gin", f'--gin.MODEL_DIR="{model_dir}"', *flags])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not (model_dir / "checkpoints").exists(), "failed run must not have computed anything"
    return err


def test_bad_binding_is_named(tmp_path, capsys):
    err = _main_errors(tmp_path, capsys, "--gin.LMConfig.d_modle=3")
    assert "LMConfig.d_modle" in err


def test_unknown_configurable_is_named(tmp_path, capsys):
    err = _main_errors(tmp_path, capsys, "--gin.NoSuchThing.x=1")
    assert "NoSuchThing" in err


def test_unparseable_value_is_named(tmp_path, capsys):
    err = _main_errors(tmp_path, capsys, "--gin.LMConfig.d_model=(((")
    assert "LMConfig.d_model" in err


def test_mesh_that_does_not_divide_devices_is_named(tmp_path, capsys):
    err = _main_errors(tmp_path, capsys, "--gin.MeshConfig.ici_parallelism=(3, 1, 1)")
    assert "ici_parallelism" in err and "8" in err


def test_missing_required_macro_is_named(tmp_path, capsys):
    from mufm.train.__main__ import main

    rc = main(["--gin_file=models/tiny.gin", "--gin_file=runs/lm.gin", "--gin_file=mesh/cpu.gin"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "MODEL_DIR" in err or "model_dir" in err


CODEC_EXPERIMENTS = [p for p in GIN_FILES if p.startswith("experiments/codec_")]


@pytest.mark.parametrize("path", CODEC_EXPERIMENTS)
def test_codec_experiment_builds_every_config(path):
    import gin

    from mufm.codec.model import CodecConfig

    gin_flags.parse([path], ['MODEL_DIR="/tmp/x"'])
    try:
        task = gin.query_parameter("train.task").scoped_configurable_fn()
        cfgs = dataclasses.asdict(task) | {"codec": task.codec, "data": task.data, "gan": task.gan}
        assert isinstance(cfgs["codec"], CodecConfig) and cfgs["codec"].frame_rate == 50.0
        assert cfgs["data"].sequence_length % cfgs["codec"].hop == 0
        assert max(cfgs["gan"].eval_levels) <= cfgs["codec"].num_levels
    finally:
        gin.clear_config()
    assert len(CODEC_EXPERIMENTS) >= 3


def test_codec_crop_that_is_not_whole_frames_is_named(tmp_path, capsys):
    from mufm.codec.__main__ import main

    model_dir = tmp_path / "run"
    rc = main(["train", "--gin_file=experiments/codec_synthetic_tiny.gin",
               f'--gin.MODEL_DIR="{model_dir}"', "--gin.DataConfig.sequence_length=1000"])
    err = capsys.readouterr().err
    assert rc == 2 and "sequence_length=1000" in err and "hop 480" in err, err
    assert not (model_dir / "checkpoints").exists()
