"""Test session set-up: 8 fake CPU devices and CPU-only JAX, before anything imports jax."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the whole session, workers and the training
# subprocesses they start (they inherit the environment): the same tiny experiments are
# trained by many tests, and compiling their programs (the codec's GAN step above all) is
# most of the suite's time. Only programs that take over a second to compile are kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mufm_tests_xla_cache_")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (seconds to minutes); still run in CI")


# The tiny random runs of the text-to-audio cascade (tests/tiny_runs.py), shared by the
# sampler's and the evaluation job's tests.
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """{role: run dir} of the tiny runs: MuLan, three stages, codec, semantic tokenizer."""
    from mufm.sample.random_runs import TINY, write_cascade

    return write_cascade(str(tmp_path_factory.mktemp("cascade_runs")), TINY)


@pytest.fixture(scope="session")
def cascade(runs):
    from tests.tiny_runs import load

    return load(runs)


# The heaviest files first (seconds per file from `--durations` of a full run on 2 cores:
# the multi-process rehearsals ~740, the TPU compile checks ~570, the codec's end-to-end
# runs ~370, ...). `launch/test.sh` spreads whole files over two pytest-xdist workers in
# collection order, so the long ones start at once instead of meeting at the end.
HEAVY_FIRST = ("tests/train/test_multiprocess.py", "tests/train/test_compile_check.py",
               "tests/codec/test_e2e.py", "tests/codec/test_step.py", "tests/train/test_train_e2e.py",
               "tests/train/test_restore.py", "tests/lm/test_stage_e2e.py",
               "tests/export/test_export.py", "tests/mulan/test_e2e.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
