#!/usr/bin/env bash
# One prepared command for a lent GPU machine (device tool): checks and times the GPU engines,
# prints one table, finishes in under 8 minutes. Run from the repository root:
#   bash benchmarks/gpu_engines.sh
# The device image has torch with CUDA but not nnunetv2 nor this project's light dependencies:
# `make gpu-wheelhouse` (here, with network) puts them as wheels under shared/wheels/, which the
# device tool copies with the working tree; they are installed --no-index below.
# Not yet run on a GPU: no session so far was lent one.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_engines.log") 2>&1
START=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ -d shared/wheels ]; then
    python3 -m pip install -q --no-index --find-links shared/wheels --no-deps shared/wheels/*.whl \
        || echo "wheel install failed (continuing with what is importable)"
fi
python3 - <<'PY'
import importlib
for name in ("torch", "nnunetv2", "onnxruntime", "tensorrt", "pydantic_settings", "safetensors"):
    try:
        module = importlib.import_module(name)
        print(f"{name:18s} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # report, do not stop: the table below says what could run
        print(f"{name:18s} missing ({type(exc).__name__}: {str(exc)[:80]})")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
# 1. Correctness of the torch engine on CUDA against ONNX Runtime / fp32 on the same weights.
CEREBRASCAN_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_engines.py -k "torch or fp16" \
    2>&1 | tail -5
# 2. Speed vs nnUNetPredictor on nnU-Net's BraTS network (the ../shared/bench anchor's case).
timeout 300 python3 benchmarks/bench_nnunet.py --device cuda --network brats --case crop \
    --tta both --repeats 3 --engines torch-fp16 torch-fp16-compile --json "$OUT/bench_nnunet.json"
echo "total $(( $(date +%s) - START )) s"
