#!/usr/bin/env bash
# The main job: from nothing to text-to-music on one 2-core machine, in under an hour.
#   1. install everything (launch/install.sh), build the `quick` embedded corpus (63 min of
#      captioned music rendered from music21 scores);
#   2. train the five models at CPU size on it: codec, semantic model (+ its k-means
#      tokens), MuLan (+ its RVQ tokens), then pre-tokenize the corpus and train the three
#      stage LMs on the tokens (configs/experiments/main/*.gin), each scored on held-out
#      clips against a unigram and a persistence baseline;
#   3. generate from captions through the cascade (configs/generate/main.gin): one 60 s
#      clip, one 30 s story in three parts, one continuation of a held-out corpus clip, and
#      measure whether the audio is music-like (spectral flatness and onset regularity
#      beside white noise, the codec's own output and the corpus: mufm/eval/musicness.py);
#   4. print the index of the WAVs (caption, seconds, file).
# Every step resumes: a second run skips what is done (delete runs/main to start over).
# These models are small and trained for minutes: the cascade runs end to end, but do not
# expect good music (README: "The main job" says what is measured and what longer runs do).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
export MUFM_TFDS_DIR=${MUFM_TFDS_DIR:-$HOME/.cache/mufm/tfds}
CORPUS_DIR=${CORPUS_DIR:-$HOME/.cache/mufm/corpus_quick}
RUNS=runs/main  # configs/generate/main.gin names the runs here
OUT=$RUNS/generated
PY=.venv/bin/python
start=$(date +%s)
mkdir -p "$RUNS" "$OUT"

step() {  # step NAME CMD...: runs CMD, prints how long it took
    local name=$1 t0
    shift
    t0=$(date +%s)
    echo "[main] $name" >&2  # stderr: stdout is the generators' index lines
    "$@"
    echo "[main] $name: $(( $(date +%s) - t0 )) s (total $(( $(date +%s) - start )) s)" >&2
}
train() {  # train EXPERIMENT RUN [bindings...]
    local exp=$1 run=$2
    shift 2
    $PY -m mufm.train --gin_file="experiments/main/$exp.gin" --gin.MODEL_DIR=\""$RUNS/$run"\" "$@"
}

step "corpus: quick" $PY -m mufm.data.corpus build --config=quick --out="$CORPUS_DIR"
step "codec" train codec codec --gin.CORPUS_DIR=\""$CORPUS_DIR"\"
step "semantic model" train semantic semantic --gin.CORPUS_DIR=\""$CORPUS_DIR"\"
if [ ! -f "$RUNS/semantic/tokens/tokens.json" ]; then
    step "semantic k-means (256 clusters, layer 2)" $PY -m mufm.semantic fit_kmeans \
        --model_dir="$RUNS/semantic" --tokens_dir="$RUNS/semantic/tokens" \
        --corpus_dir="$CORPUS_DIR" --layer=2 --num_clusters=256
fi
step "MuLan" train mulan mulan --gin.CORPUS_DIR=\""$CORPUS_DIR"\"
if [ ! -f "$RUNS/mulan/mulan_tokens/tokens.json" ]; then
    step "MuLan tokens (12 levels x 64)" $PY -m mufm.mulan fit_tokens \
        --checkpoint_dir="$RUNS/mulan" --codebook_size=64 --passes=10
fi
step "pre-tokenize the corpus" $PY -m mufm.data.pretokenize --source=corpus:quick \
    --corpus_dir="$CORPUS_DIR" --codec="$RUNS/codec" --semantic="$RUNS/semantic" \
    --semantic_tokens="$RUNS/semantic/tokens" --mulan="$RUNS/mulan" --out="$RUNS/tokens" \
    --direct_num_workers=2
for stage in semantic coarse fine; do
    step "$stage stage" train "stage_$stage" "stage_$stage" --gin.TOKENS_DIR=\""$RUNS/tokens"\"
    step "$stage stage: held-out test" $PY -m mufm.lm evaluate \
        --model_dir="$RUNS/stage_$stage" --split=test
done

# Captions in the corpus's own style (the stages only ever saw these).
GEN="$PY -m mufm.generate --gin_file=configs/generate/main.gin"
: > "$OUT/index.tsv"
step "generate: 60 s" $GEN --seconds 60 --out "$OUT/air_60s.wav" \
    --text "D major, 99 bpm, 2/4: a moderate Scottish air played by an accordion" \
    | tee -a "$OUT/index.tsv"
step "generate: story" $GEN --out "$OUT/story_30s.wav" \
    --story "G major, 120 bpm, 4/4: a lively folk dance played by a fiddle@10;E minor, 70 bpm, 3/4: a slow chorale sung by a choir@10;G major, 120 bpm, 4/4: a lively folk dance played by a fiddle@10" \
    | tee -a "$OUT/index.tsv"
# The continuation's prompt: 8 s from the middle of the first held-out clip.
PROMPT=$($PY - "$CORPUS_DIR" "$OUT/prompt_8s.wav" <<'EOF'
import sys
import soundfile as sf
from mufm.audio.io import read
from mufm.data.corpus.manifest import read_manifest
corpus, out = sys.argv[1:]
r = [r for r in read_manifest(corpus) if r["split"] == "test"][0]
x, rate = read(f"{corpus}/{r['audio']}", max(0.0, r["attributes"]["duration_s"] / 2 - 4), 8.0)
sf.write(out, x.mean(1), rate)
print(r["caption"])
EOF
)
step "generate: continuation" $GEN --prompt_audio "$OUT/prompt_8s.wav" --seconds 20 \
    --text "$PROMPT" --out "$OUT/continuation_20s.wav" | tee -a "$OUT/index.tsv"

step "is it music? (mufm/eval/musicness.py)" $PY -m mufm.eval.musicness \
    "$OUT/air_60s.wav" "$OUT/story_30s.wav" "$OUT/continuation_20s.wav" \
    --corpus_dir="$CORPUS_DIR" --codec="$RUNS/codec" --out="$OUT/musicness"

echo "[main] done in $(( $(date +%s) - start )) s"
echo "[main] runs:      $RUNS/{codec,semantic,mulan,stage_semantic,stage_coarse,stage_fine}"
echo "[main] tokens:    $RUNS/tokens (manifest.json, stats.json)"
echo "[main] measured:  $OUT/musicness.md (.json)"
echo "[main] generated (caption, seconds, file):"
cat "$OUT/index.tsv"
