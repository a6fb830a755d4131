#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes) for a lent GPU machine: PyTorch, cuda-python and CuPy are there,
# TensorRT is not. Run from the repository root: bash tools/gpu_check.sh [OUTDIR]
# Writes its logs to OUTDIR (default: $OUT where the device tool sets it, else /tmp/edgecv-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/edgecv-gpu-check}}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "import cuda.bindings; print('cuda-bindings', cuda.bindings.__version__)" || true
# edgecv from the tree (no install step: the machine has no network).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
for m in onnxruntime click rich tqdm yaml cv2; do python3 -c "import $m" 2>/dev/null || echo "missing $m"; done
rc=0
# The GPU tests (kernel vs its numpy reference; TrtBackend on real CUDA with a stand-in engine; the export's
# distillation and QAT on the GPU) and the NVRTC/reference tests beside them; -p no:cacheprovider: the tree may be read-only.
# The multi-camera GPU test needs a bundle: a carried one (EDGECV_GPU_TEST_BUNDLE, e.g. the quickstart's
# out/fashion), else the tests' own tiny export (torch-pruning and the training extras must be there).
if [ -z "${EDGECV_GPU_TEST_BUNDLE:-}" ] && [ -f out/fashion/manifest.json ]; then export EDGECV_GPU_TEST_BUNDLE=$PWD/out/fashion; fi
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu_preprocess.py \
    tests/test_gpu_real_cuda.py tests/test_gpu_loops.py tests/test_trt_backend_fake_gpu.py tests/test_gpu_distill.py -rs 2>&1 \
    | tee "$out/gpu_tests.log" || rc=1
timeout 120 python3 tools/gpu_check.py 2>&1 | tee "$out/gpu_check.jsonl" || rc=1
timeout 120 python3 tools/gpu_preprocess_bench.py --json "$out/gpu_preprocess_bench.json" 2>&1 \
    | tee "$out/gpu_preprocess_bench.log" || rc=1
exit $rc
