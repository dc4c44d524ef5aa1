"""mufm: a MusicLM-style music foundation model in JAX/Flax NNX."""
import glob as _glob
import importlib.util as _importlib_util
import os as _os


def _pin_platform_off_tpu() -> None:
    """libtpu is installed with the `tpu` extra (the ahead-of-time compile check needs it).
    On a machine with no TPU chips a plain jax start would then try to bring up a TPU
    runtime and log errors about TPU worker hostnames; so when JAX_PLATFORMS is unset, no
    TPU device node exists and libtpu is importable, jax is pointed at the GPU (if a CUDA
    plugin is installed) and the CPU. Runs before any `python -m mufm.X` imports jax."""
    if _os.environ.get("JAX_PLATFORMS") or _importlib_util.find_spec("libtpu") is None:
        return
    if _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"):  # a TPU VM
        return
    cuda = any(_importlib_util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    _os.environ["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"


_pin_platform_off_tpu()
