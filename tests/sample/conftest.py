"""The cascade tests' shared request: the tiny runs are tests/tiny_runs.py."""
import pytest

from tests.tiny_runs import SECONDS, TEXTS, load  # noqa: F401 (the tests import them here)


@pytest.fixture(scope="session")
def tokens(cascade):
    return cascade.generate_tokens(TEXTS, SECONDS, seed=0, progress=False)


