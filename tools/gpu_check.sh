#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes) for a lent GPU machine: PyTorch, cuda-python and CuPy are there,
# TensorRT is not. Run from the repository root: bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# edgecv from the tree (no install step: the machine has no network).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
for m in onnxruntime click rich tqdm yaml cv2; do python3 -c "import $m" 2>/dev/null || echo "missing $m"; done
PYTHONUNBUFFERED=1 timeout 280 python3 tools/gpu_check.py
