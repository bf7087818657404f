#!/usr/bin/env bash
# escalade in one command, with no GPU and no API key: a real vLLM on this machine's CPU, launched
# and supervised by the gateway, serving a tiny random-weight mixture-of-experts model.
#
#   bash deploy/quickstart.sh
#
# 1. installs escalade (pip install -e .) and the OpenAI SDK for the demo request;
# 2. creates the pinned CPU vLLM venv (local_engine/cpu/setup_venv.sh; ~1.5 min the first time)
#    and links it to /tmp/escalade-vllm/venv, where deploy/policies/local-cpu.yaml expects it;
# 3. builds the tiny model into /tmp/escalade-vllm/tiny-mixtral (a few seconds, once);
# 4. starts `escalade serve --policy deploy/policies/local-cpu.yaml`, which launches the engine,
#    and waits until /readyz says the gateway can serve (the engine needs 20-60 s to start);
# 5. sends one chat request through the OpenAI SDK and prints the answer (random text: the model
#    is random), the deployment that answered (x-escalade-model) and the cost (x-escalade-cost-usd);
# 6. leaves the gateway running at http://127.0.0.1:8080/v1 until Ctrl-C, which stops the gateway
#    and its engine (the engine's whole process group).
#
# ESCALADE_PYTHON picks the Python that runs escalade (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=/tmp/escalade-vllm # fixed: deploy/policies/local-cpu.yaml names these paths
POLICY=deploy/policies/local-cpu.yaml
PY=${ESCALADE_PYTHON:-python3}
API=http://127.0.0.1:8080
ADMIN=http://127.0.0.1:8081
READY_TIMEOUT=${ESCALADE_READY_TIMEOUT:-300}

say() { echo "quickstart: $*" >&2; }

for port in 8080 8081 8765; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "port $port is already in use (another escalade or vLLM?); stop it first"
    exit 1
  fi
done

say "installing escalade"
"$PY" -m pip install -q --disable-pip-version-check -e . 'openai>=1.40' 2>&1 \
  | grep -v -e '^WARNING: Location' -e 'Running pip as' >&2 || true
"$PY" -c "import gateway, openai" || { say "installing escalade failed"; exit 1; }

say "preparing the CPU vLLM venv (about 1.5 min the first time)"
venv=$(bash local_engine/cpu/setup_venv.sh | tail -1)
mkdir -p "$ROOT/tmp" "$ROOT/cache"
ln -sfn "$venv" "$ROOT/venv"

say "building the tiny model"
"$venv/bin/python" local_engine/cpu/make_tiny_model.py "$ROOT/tiny-mixtral" >&2

say "starting escalade (it launches the engine)"
"$PY" -m gateway.cli serve --policy "$POLICY" &
gateway=$!
stop() {
  trap - EXIT INT TERM
  if kill -0 "$gateway" 2>/dev/null; then
    say "stopping escalade and its engine"
    kill -TERM "$gateway" 2>/dev/null || true
    wait "$gateway" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'stop; exit 130' INT TERM

t0=$(date +%s)
until curl -sf -o /dev/null --max-time 2 "$API/readyz"; do
  kill -0 "$gateway" 2>/dev/null || { say "escalade exited; see the messages above"; exit 1; }
  elapsed=$(( $(date +%s) - t0 ))
  if [ "$elapsed" -ge "$READY_TIMEOUT" ]; then
    say "not ready after ${READY_TIMEOUT}s; engine status and log:"
    "$PY" -m gateway.cli engine status --policy "$POLICY" >&2 || true
    tail -n 40 "$("$PY" -c 'from local_engine.runfiles import default_run_dir as d; print(d())')"/engine-local-8765.log >&2 || true
    exit 1
  fi
  if [ $(( elapsed % 10 )) -eq 0 ]; then
    state=$(curl -s --max-time 2 "$ADMIN/readyz" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["engines"]["local"]["state"])' 2>/dev/null || echo "?")
    say "waiting for the engine (${elapsed}s, $state)"
  fi
  sleep 1
done
say "ready after $(( $(date +%s) - t0 ))s"

"$PY" - "$API/v1" <<'EOF'
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="not-needed-on-loopback")
raw = client.chat.completions.with_raw_response.create(
    model="auto", messages=[{"role": "user", "content": "Say hello in five words."}], max_tokens=24
)
answer = raw.parse()
print(f"answer: {answer.choices[0].message.content!r}  (random text: the quickstart model has random weights)")
print(f"model:  {raw.headers['x-escalade-model']} (route {raw.headers['x-escalade-route']})")
print(f"cost:   ${raw.headers.get('x-escalade-cost-usd', '?')} for {answer.usage.total_tokens} tokens")
EOF

cat >&2 <<EOF

escalade is running: OPENAI_BASE_URL=$API/v1 (routes: auto, think). Try:
  curl -s $API/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}'
  $PY -m gateway.cli engine status --policy $POLICY
Ctrl-C stops the gateway and its engine.
EOF
wait "$gateway"
