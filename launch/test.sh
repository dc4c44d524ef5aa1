#!/usr/bin/env bash
# The test command: install (idempotent), then the whole pytest suite on CPU.
# tests/conftest.py forces an 8-device host platform so sharding tests see a real mesh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest tests "$@"
