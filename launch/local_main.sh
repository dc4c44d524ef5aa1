#!/usr/bin/env bash
# The main job on a fresh machine: install everything, build the `quick` embedded corpus
# (~1 h of captioned music rendered from music21 scores; resumable, so a second run skips
# it), then train the synthetic_tiny experiment end to end (train, checkpoint, resume):
# 200 steps, then the same command continues to 300 from the step-200 checkpoint.
# Later issues grow this into the whole audio pipeline (codec, stage LMs, sampling).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
CORPUS_DIR=${CORPUS_DIR:-$HOME/.cache/mufm/corpus_quick}
echo "[main] building the quick corpus in $CORPUS_DIR"
.venv/bin/python -m mufm.data.corpus build --config=quick --out="$CORPUS_DIR"

MODEL_DIR=${MODEL_DIR:-runs/synthetic_tiny}
rm -rf "$MODEL_DIR"
train() {
  .venv/bin/python -m mufm.train --gin_file=experiments/synthetic_tiny.gin \
    --gin.MODEL_DIR=\""$MODEL_DIR"\" "$@"
}
echo "[main] training 200 steps into $MODEL_DIR"
train --gin.TRAIN_STEPS=200 --gin.OptimizerConfig.decay_steps=300
echo "[main] resuming the same run to 300 steps"
train --gin.TRAIN_STEPS=300 --gin.OptimizerConfig.decay_steps=300
echo "[main] corpus: $CORPUS_DIR (report.json, manifest.jsonl, audio/)"
echo "[main] done: checkpoints in $MODEL_DIR/checkpoints, TensorBoard logs and config.gin in $MODEL_DIR"
