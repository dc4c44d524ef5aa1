"""Test session set-up: 8 fake CPU devices and CPU-only JAX, before anything imports jax."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    # Tests over ~60 s on 2 CPU cores (e.g. codec overfitting); deselect with -m "not slow".
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")
