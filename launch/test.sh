#!/usr/bin/env bash
# The test command: install (idempotent), then the whole pytest suite on CPU.
# tests/conftest.py forces an 8-device host platform so sharding tests see a real mesh.
# Whole files go to MUFM_TEST_WORKERS pytest-xdist processes (default 2, the CI machine's
# cores; each worker holds its own session fixtures, ~8 GB at most); 0 runs in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
export JAX_PLATFORMS=cpu
workers=${MUFM_TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  exec .venv/bin/python -m pytest -n "$workers" --dist loadfile tests "$@"
fi
exec .venv/bin/python -m pytest tests "$@"
