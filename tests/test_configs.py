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


def test_codec_experiments_are_found():
    # Outside the parametrized test: with no codec experiment found it would be skipped,
    # not failed.
    assert len(CODEC_EXPERIMENTS) >= 3, CODEC_EXPERIMENTS


EXPERIMENTS = [p for p in GIN_FILES if p.startswith("experiments/")]


def test_experiments_are_found():
    assert len(EXPERIMENTS) >= 5 and "experiments/synthetic_tiny.gin" in EXPERIMENTS, EXPERIMENTS


def _batch_parallelism(mesh_cfg):
    """(devices a global batch is split over, whether that is exact): the product over the
    mesh axes the `batch` rule names of ici x dcn sizes, from the MeshConfig alone. An axis
    sized -1 takes the devices left over, so only its fixed part is known without devices."""
    from mufm.parallel.mesh import MESH_AXES

    rules = dict(mesh_cfg.rules)
    axes = rules["batch"]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    size, exact = 1, True
    for axis in axes:
        i = MESH_AXES.index(axis)
        for part in (mesh_cfg.ici_parallelism[i], mesh_cfg.dcn_parallelism[i]):
            if part == -1:
                exact = False
            else:
                size *= int(part)
    return size, exact


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_builds_the_trainers_configs(path):
    """What `mufm.train` would build from each experiment, built without devices or data
    (a corpus task may be registered; nothing is read): train's task, mesh, run and
    checkpoint, and the invariants a run needs before it can start."""
    import gin

    from mufm.data.pipeline import DataConfig
    from mufm.parallel.mesh import MESH_AXES, MeshConfig
    from mufm.train.checkpoint import CheckpointConfig
    from mufm.train.loop import RunConfig
    from mufm.train.task import Task

    # Stage experiments read pre-tokenised clips; none are needed to build them.
    tokens = ['TOKENS_DIR="/tmp/no_tokens"'] if "stage_" in path else []
    gin_flags.parse([path], ['MODEL_DIR="/tmp/x"', *tokens])
    try:
        built = {name: gin.query_parameter(f"train.{name}").scoped_configurable_fn()
                 for name in ("task", "mesh", "run", "checkpoint")}
        task, mesh, run, ckpt = (built[k] for k in ("task", "mesh", "run", "checkpoint"))
        assert isinstance(task, Task), type(task)
        assert isinstance(mesh, MeshConfig) and isinstance(run, RunConfig)
        assert isinstance(ckpt, CheckpointConfig)
        task.validate(run)  # what train() checks before any compute
        batch_spec = task.batch_spec()
        optimizers = task.make_optimizer(run.train_steps)
    finally:
        gin.clear_config()
    assert run.model_dir == "/tmp/x" and run.train_steps >= 1 and run.log_every >= 1
    assert run.eval_every >= 0 and run.eval_batches >= 1
    assert ckpt.save_every >= 1 and ckpt.keep >= 1
    data = task.data
    assert isinstance(data, DataConfig) and data.batch_size >= 1 and data.sequence_length >= 1
    # The global batch is split over the batch rule's mesh axes: it must divide evenly.
    rule_axes = {a for _, axes in mesh.rules if axes is not None
                 for a in ((axes,) if isinstance(axes, str) else axes)}
    assert rule_axes <= set(MESH_AXES), rule_axes
    dp, exact = _batch_parallelism(mesh)
    assert data.batch_size % dp == 0, (data.batch_size, dp, exact)
    assert batch_spec and all(s.shape[0] == data.batch_size for s in batch_spec.values()), batch_spec
    # Every player's learning rate is positive once warm-up is over.
    assert optimizers.schedules and all(float(sched(run.train_steps // 2)) > 0
                                        for sched in optimizers.schedules.values())


def test_codec_crop_that_is_not_whole_frames_is_named(tmp_path, capsys):
    from mufm.codec.__main__ import main

    model_dir = tmp_path / "run"
    rc = main(["train", "--gin_file=experiments/codec_synthetic_tiny.gin",
               f'--gin.MODEL_DIR="{model_dir}"', "--gin.DataConfig.sequence_length=1000"])
    err = capsys.readouterr().err
    assert rc == 2 and "sequence_length=1000" in err and "hop 480" in err, err
    assert not (model_dir / "checkpoints").exists()
