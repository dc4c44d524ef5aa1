"""Documented commands work as typed on a machine without TPU chips although libtpu (the
compile check's extra) is installed: importing mufm points jax away from the TPU runtime."""
import importlib.util
import glob
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
@pytest.mark.skipif(bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")),
                    reason="a TPU VM: jax should find its chips")
def test_import_pins_jax_off_the_tpu_runtime():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = "import mufm, os, jax; print(os.environ['JAX_PLATFORMS'], jax.devices()[0].platform)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    platforms, first = proc.stdout.split()
    assert "tpu" not in platforms and first in ("cpu", "gpu")
    assert "TPU_WORKER_HOSTNAMES" not in proc.stderr


def test_an_explicit_choice_is_kept():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", "import mufm, os; print(os.environ['JAX_PLATFORMS'])"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "cpu"
