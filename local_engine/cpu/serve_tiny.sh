#!/usr/bin/env bash
# Start vLLM (CPU) serving the tiny model in the background, wait until it is healthy.
#
# Usage: serve_tiny.sh VENV MODEL_DIR PORT LOGFILE
#
# On success prints the server's PID, which is also its process-group id, as the last line
# of stdout. Stop it with:  kill -TERM -- -PID; sleep 3; kill -KILL -- -PID
# On failure (process died, or not healthy within ESCALADE_VLLM_HEALTH_TIMEOUT=300 s) prints
# the log tail to stderr, kills the process group and exits 1.
set -euo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 VENV MODEL_DIR PORT LOGFILE" >&2
  exit 2
fi
VENV=$1 MODEL_DIR=$2 PORT=$3 LOGFILE=$4
ROOT=${ESCALADE_VLLM_ROOT:-/tmp/escalade-vllm}
TIMEOUT=${ESCALADE_VLLM_HEALTH_TIMEOUT:-300}
URL="http://127.0.0.1:$PORT"

log() { echo "serve_tiny: $*" >&2; }

[ -x "$VENV/bin/python" ] || { log "no python in venv $VENV"; exit 1; }
[ -f "$MODEL_DIR/model.safetensors" ] || { log "no model in $MODEL_DIR (run make_tiny_model.py)"; exit 1; }
if curl -s -o /dev/null --max-time 2 "$URL/health"; then
  log "something already answers on port $PORT; refusing to start a second server"
  exit 1
fi

mkdir -p "$ROOT/cache/vllm" "$ROOT/cache/torchinductor" "$ROOT/tmp" "$(dirname "$LOGFILE")"

export VLLM_CPU_KVCACHE_SPACE=1
export VLLM_CACHE_ROOT="$ROOT/cache/vllm"
export TORCHINDUCTOR_CACHE_DIR="$ROOT/cache/torchinductor"
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# vLLM leaves /tmp/vllm_dist_* behind, and torch writes precompiled headers to
# $TMPDIR/torchinductor_$USER whatever TORCHINDUCTOR_CACHE_DIR says: keep both in ROOT.
export TMPDIR="$ROOT/tmp"
if [ -f "$VENV/lib/libiomp5.so" ]; then
  export LD_PRELOAD="$VENV/lib/libiomp5.so${LD_PRELOAD:+:$LD_PRELOAD}"
fi

t0=$(date +%s)
# In a non-interactive shell the background child is not a group leader, so setsid does not
# fork: $! is the server itself, and its PID is the id of its new session/process group.
setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$MODEL_DIR" --served-model-name tiny-mixtral \
  --host 127.0.0.1 --port "$PORT" \
  --dtype float32 --enforce-eager --max-model-len 2048 \
  --enable-auto-tool-choice --tool-call-parser mistral --reasoning-parser mistral \
  --structured-outputs-config '{"backend":"xgrammar","disable_any_whitespace":true,"enable_in_reasoning":true}' \
  </dev/null >"$LOGFILE" 2>&1 &
PID=$!

fail() {
  log "$1; last lines of $LOGFILE:"
  tail -n 60 "$LOGFILE" >&2 || true
  kill -TERM -- "-$PID" 2>/dev/null || true
  sleep 3
  kill -KILL -- "-$PID" 2>/dev/null || true
  exit 1
}

while :; do
  if curl -sf -o /dev/null --max-time 2 "$URL/health"; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || fail "server process $PID exited"
  [ $(( $(date +%s) - t0 )) -lt "$TIMEOUT" ] || fail "not healthy after $TIMEOUT s"
  sleep 1
done

pgid=$(ps -o pgid= -p "$PID" | tr -d ' ')
[ "$pgid" = "$PID" ] || log "WARNING: process group is $pgid, not $PID"
log "healthy after $(( $(date +%s) - t0 )) s at $URL (log: $LOGFILE)"
echo "$PID"
