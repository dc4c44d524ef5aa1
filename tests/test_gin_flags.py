"""Only gin's own errors become "configuration error" (exit 2); the program's own errors
keep their type and traceback, whatever their message says."""
import gin
import pytest

from mufm import gin_flags
from mufm.gin_flags import GinConfigError


@gin.configurable
def _needs_value(value=gin.REQUIRED):
    return value


@gin.configurable
def _fails_mid_run(message="the engine's origin margin: gin"):
    raise ValueError(message)


def _run(entry, tmp_path, *bindings):
    cfg = tmp_path / "x.gin"
    cfg.write_text("import tests.test_gin_flags\n")
    return gin_flags.run_main(entry, [f"--gin_file={cfg}", *[f"--gin.{b}" for b in bindings]])


def test_missing_required_value_is_a_configuration_error(tmp_path):
    with pytest.raises(GinConfigError, match="value"):
        _run(_needs_value, tmp_path)
    gin.clear_config()


def test_a_runtime_error_mentioning_gin_stays_itself(tmp_path):
    with pytest.raises(ValueError, match="engine") as info:
        _run(_fails_mid_run, tmp_path)
    assert not isinstance(info.value, GinConfigError)
    gin.clear_config()


def test_bound_value_is_used(tmp_path):
    assert _run(_needs_value, tmp_path, "_needs_value.value=3") == 3
    gin.clear_config()
