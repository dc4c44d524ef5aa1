"""Test session set-up: 8 fake CPU devices and CPU-only JAX, before anything imports jax."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (seconds to minutes); still run in CI")


# The tiny random runs of the text-to-audio cascade (tests/tiny_runs.py), shared by the
# sampler's and the evaluation job's tests.
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """{role: run dir} of the tiny runs: MuLan, three stages, codec, semantic tokenizer."""
    import numpy as np

    from tests.tiny_runs import (CODEC_GIN, MULAN_GIN, STAGE_BINDINGS, STAGE_GIN,
                                 semantic_tokenizer_run, write_run)

    from mufm.mulan.tokens import MuLanTokens

    root = tmp_path_factory.mktemp("cascade_runs")
    out = {"codec": write_run(CODEC_GIN, str(root / "codec"), 1, mark_codebooks=True),
           "mulan": write_run(MULAN_GIN, str(root / "mulan"), 0)}
    emb = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    MuLanTokens.fit(emb / np.linalg.norm(emb, axis=1, keepdims=True), num_levels=3,
                    codebook_size=16).save(os.path.join(out["mulan"], "mulan_tokens"))
    for name, bindings in STAGE_BINDINGS.items():
        out[name] = write_run(STAGE_GIN, str(root / name), 0,
                              bindings=['TOKENS_DIR="/nonexistent"', *bindings])
    out["semantic_tokenizer"] = semantic_tokenizer_run(str(root / "semantic_tokenizer"))
    return out


@pytest.fixture(scope="session")
def cascade(runs):
    from tests.tiny_runs import load

    return load(runs)
