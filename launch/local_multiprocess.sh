#!/usr/bin/env bash
# A multi-host rehearsal on one machine: N real processes joined by jax.distributed on
# localhost (CPU collectives through gloo), each with DEVICES_PER_PROCESS fake CPU devices,
# all running the same `python -m mufm.train` command on one global mesh, each reading its
# own seqio input shards.
#
#   bash launch/local_multiprocess.sh 2 --gin_file=experiments/synthetic_tiny.gin \
#       --gin_file=mesh/cpu8.gin --gin.MODEL_DIR=\"runs/mp\"
#
# Logs: $LOG_DIR/process_<i>.log (default runs/multiprocess_logs). If one process fails,
# the others get GRACE_S seconds (default 60) to finish or fail on their own, then are
# killed, and the script exits with the first failure's status naming the process: a dead
# host never leaves the rest waiting on a collective forever.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: bash launch/local_multiprocess.sh N [python -m mufm.train flags...]" >&2
  exit 2
fi
N=$1; shift
PYTHON=${PYTHON:-.venv/bin/python}
DEVICES=${DEVICES_PER_PROCESS:-4}
GRACE_S=${GRACE_S:-60}
LOG_DIR=${LOG_DIR:-runs/multiprocess_logs}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$LOG_DIR"

pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
  TF_CPP_MIN_LOG_LEVEL=2 "$PYTHON" -m mufm.train "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
echo "[multiprocess] $N processes x $DEVICES devices, coordinator 127.0.0.1:$PORT, pids ${pids[*]}, logs in $LOG_DIR"

failed="" ; status=0 ; deadline=0
while :; do
  running=0
  for ((i = 0; i < N; i++)); do
    pid=${pids[$i]}
    [ -z "$pid" ] && continue
    if kill -0 "$pid" 2>/dev/null; then running=$((running + 1)); continue; fi
    rc=0; wait "$pid" || rc=$?
    pids[$i]=""
    if [ "$rc" -ne 0 ] && [ -z "$failed" ]; then
      failed=$i; status=$rc; deadline=$(( $(date +%s) + GRACE_S ))
      echo "[multiprocess] process $i exited with status $rc (see $LOG_DIR/process_$i.log)" >&2
    fi
  done
  [ "$running" -eq 0 ] && break
  if [ -n "$failed" ] && [ "$(date +%s)" -ge "$deadline" ]; then
    for ((i = 0; i < N; i++)); do
      if [ -n "${pids[$i]}" ]; then
        echo "[multiprocess] process $i still running ${GRACE_S} s after process $failed failed: killed" >&2
        kill -9 "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true  # reaped, not left a zombie
      fi
    done
    break
  fi
  sleep 1
done
if [ -n "$failed" ]; then
  echo "[multiprocess] failed: process $failed (status $status)" >&2
  exit "$status"
fi
echo "[multiprocess] all $N processes finished"
