#!/usr/bin/env bash
# Full TensorRT 8.6.0 (builder API, IInt8EntropyCalibrator2) installs only for Python 3.10 (~3.7 GB with
# cuBLAS and cuDNN 8.9). Runs the API-surface check (import, builder + runtime side) and the calibrator
# tests against the real bindings. No GPU needed. Usage: bash tools/trt86_check.sh [PYTHON3.10] [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$(command -v python3.10 || ls ~/.pyenv/versions/3.10*/bin/python 2>/dev/null | head -1)}
VENV=${2:-/tmp/edgecv-trt86}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q tensorrt==8.6.0 'nvidia-cudnn-cu12==8.9.*' numpy pyyaml click tqdm rich onnx onnxruntime \
  opencv-python-headless pytest
SITE=$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$(find "$SITE/nvidia" "$SITE"/tensorrt* -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':')
export PYTHONPATH=$PWD
"$VENV/bin/python" tools/trt_api_surface.py --module tensorrt --side all
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_calibrator.py
