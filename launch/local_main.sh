#!/usr/bin/env bash
# The main job on a fresh machine (~25 min on 2 cores): install everything, build the
# `quick` embedded corpus (~1 h of captioned music rendered from music21 scores; resumable,
# so a second run skips it), train the tiny codec GAN on it (experiments/codec_corpus_cpu.gin),
# then evaluate it on the held-out test works against Opus and a mu-law coder at 1.5 / 3 /
# 6 kbit/s, writing the comparison table and reconstructions (WAV).
# Re-running resumes the codec run from its last checkpoint (delete $RUN_DIR to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
CORPUS_DIR=${CORPUS_DIR:-$HOME/.cache/mufm/corpus_quick}
RUN_DIR=${RUN_DIR:-runs/codec_corpus_cpu}
export MUFM_TFDS_DIR=${MUFM_TFDS_DIR:-$HOME/.cache/mufm/tfds}
start=$(date +%s)
echo "[main] building the quick corpus in $CORPUS_DIR"
.venv/bin/python -m mufm.data.corpus build --config=quick --out="$CORPUS_DIR"

echo "[main] training the codec into $RUN_DIR (TensorBoard: tensorboard --logdir $RUN_DIR)"
.venv/bin/python -m mufm.train --gin_file=experiments/codec_corpus_cpu.gin \
  --gin.MODEL_DIR=\""$RUN_DIR"\" --gin.CORPUS_DIR=\""$CORPUS_DIR"\"

echo "[main] evaluating on held-out clips against Opus and mu-law"
.venv/bin/python -m mufm.codec evaluate --checkpoint_dir="$RUN_DIR" --out_dir="$RUN_DIR/eval"

echo "[main] done in $(( $(date +%s) - start )) s"
echo "[main] corpus:          $CORPUS_DIR (report.json, manifest.jsonl, audio/)"
echo "[main] codec run:       $RUN_DIR (checkpoints/, config.gin, TensorBoard events)"
echo "[main] table:           $RUN_DIR/eval/codec_comparison.md (.json)"
echo "[main] reconstructions: $RUN_DIR/eval/wav/"
