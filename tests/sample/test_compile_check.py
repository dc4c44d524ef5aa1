"""The generation programs' TPU compile check (mufm/sample/compile_check.py): each stage's
window sampler, as the cascade runs it on a mesh, compiled by libtpu for a v5e slice on
this CPU machine. In a subprocess: libtpu needs a fresh jax with the module's environment."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("libtpu", reason="the compile check needs libtpu (pip install -e .[tpu])")


def _check(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mufm.sample.compile_check", *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def test_stage_samplers_compile_for_a_v5e_slice(runs, tmp_path):
    from mufm.sample.cascade import DEFAULT_CONFIGS
    from mufm.sample.compile_check import stage_from_gin
    from mufm.sample.random_runs import TINY

    out = tmp_path / "reports.json"
    # The stages of a generate config, read from their run directories, its sampling with
    # one stage's temperature changed by a binding.
    proc = _check("--topology=v5e:2x2", "--gin_file=generate/main.gin",
                  *(f"--gin.GenerateConfig.{name}='{runs[name]}'"
                    for name in ("semantic", "coarse", "fine")),
                  "--gin.fine/SamplingConfig.temperature=0.25",
                  "--batch=6", f"--json={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("fits=true per_chip_bytes=")
    assert f"coarse stage from {runs['coarse']}" in proc.stdout
    assert "fine stage from" in proc.stdout and "temperature=0.25" in proc.stdout
    reports = json.loads(out.read_text())
    assert [r["program"].split()[0] for r in reports] == ["semantic", "coarse", "fine"]
    for r in reports:
        # 6 rows padded to 8, two a chip, over the slice's 4 chips.
        assert r["num_devices"] == 4 and "(8 rows," in r["program"], r["program"]
        assert r["fits"] and 0 < r["per_chip_bytes"] < r["hbm_bytes"] == 16 * 2 ** 30
        assert r["flops_per_device"] > 0
    # The weights are replicated: every chip's arguments hold the whole stage model.
    gin_file, bindings = TINY.stages["semantic"]
    stage = stage_from_gin("semantic", gin_file, bindings, DEFAULT_CONFIGS["semantic"])
    weights = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                  for x in jax.tree.leaves(stage.abstract))
    assert weights <= reports[0]["argument_bytes"] < weights + 64 * 1024


def test_a_missing_stage_or_a_wrong_layout_is_a_clear_error(runs):
    proc = _check("--topology=v5e:2x2", f"--semantic={runs['semantic']}")
    assert proc.returncode == 2 and "no source for the coarse, fine stage" in proc.stderr, proc.stderr
    proc = _check("--topology=v5e:2x2", "--recipe=tiny", f"--fine={runs['coarse']}")
    assert proc.returncode == 2 and "a 'coarse' stage's layout" in proc.stderr, proc.stderr


def test_a_batch_over_hbm_reports_does_not_fit():
    # 4M rows of the tiny semantic stage: ~450 GiB of KV cache and logits a chip.
    proc = _check("--topology=v5e:2x2", "--recipe=tiny", "--batch=4000000")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESOURCE_EXHAUSTED" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("fits=false")
