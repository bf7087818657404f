#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what the tests need, then runs pytest.
#
#   bash tests/run.sh            # everything (builds the CPU vLLM venv and tiny model on first run)
#   ESCALADE_SKIP_VLLM=1 bash tests/run.sh   # without the real-vLLM tests (they are skipped)
#
# Extra arguments go to pytest. The CPU vLLM venv and the tiny model live under /tmp/escalade-vllm
# and are reused while their pins are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "tests/run.sh: $*" >&2; }

python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e '^WARNING: Location' -e 'Running pip as' >&2 || true
python3 -c "import gateway, openai, pytest" || { log "installing the package failed"; exit 1; }
# The compiled span encoder (gateway/_otlp_span.c) is optional for users; where there is a C compiler, as on
# CI, the build must have made it, or its tests would only be skipped.
if command -v cc >/dev/null 2>&1 && ! python3 -c "import gateway._otlp_span" 2>/dev/null; then
  log "a C compiler is here but gateway/_otlp_span.c was not built"; exit 1
fi

# The Redis store's tests run against a real redis-server (tests/support/redis.py starts its own).
if ! command -v redis-server >/dev/null 2>&1; then
  log "redis-server is missing: installing it (apt-get install redis-server)"
  sudo_=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo_="sudo"
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || log "apt-get update failed"
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2 \
    || log "installing redis-server failed: the Redis tests will be skipped"
  if [ -n "${CI:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
    log "CI needs redis-server (the Redis store is tested for real): stopping"; exit 1
  fi
  # The package may start a system redis on port 6379; the tests do not use it.
fi

if [ -z "${ESCALADE_SKIP_VLLM:-}" ]; then
  t0=$(date +%s)
  venv=$(bash local_engine/cpu/setup_venv.sh | tail -1)
  model_dir=${ESCALADE_TINY_MODEL:-/tmp/escalade-vllm/tiny-mixtral}
  "$venv/bin/python" local_engine/cpu/make_tiny_model.py "$model_dir" >&2
  export ESCALADE_VLLM_VENV="$venv" ESCALADE_TINY_MODEL="$model_dir"
  log "CPU vLLM ready in $(( $(date +%s) - t0 )) s: $venv, model $model_dir"
else
  log "ESCALADE_SKIP_VLLM is set: the real-vLLM tests will be skipped"
fi

exec python3 -m pytest -q -p no:cacheprovider "$@"
