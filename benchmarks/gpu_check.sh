#!/usr/bin/env bash
# The GPU check (issue #19): one command for a lent GPU machine that FAILS on any failure.
#
#   bash benchmarks/gpu_check.sh            # OUT=<folder> for the log, JSON and junit files
#
# Steps, each with its own time limit so the whole run fits in 8 minutes:
#   1. the GPU and the packages: every engine's package must import (a missing one is a failure,
#      not a skip: the check must not pass by running less);
#   2. engine tests with CEREBRASCAN_TEST_DEVICE=cuda: ORT CUDA EP, ORT TensorRT EP (fp32/fp16),
#      native TensorRT (fp32/fp16), torch (fp32/fp16, +compile), each asserting the provider
#      actually used and label agreement >= 0.999 with CPU fp32 (tests/test_gpu_engines.py), plus
#      the CPU-side defences (tests/test_gpu_paths.py, tests/test_engines.py);
#   3. nnU-Net's BraTS network on the anchor's 4x140x172x140 case vs nnUNetPredictor, with and
#      without TTA (benchmarks/bench_nnunet.py; ../shared/bench holds the H100 reference);
#   4. /analyze end to end at 1/4/8 concurrent clients through a real `bentoml serve`
#      (benchmarks/gpu_serve_check.sh).
# Then one table (step, status, seconds) and $OUT/gpu_check.json; exit status 1 if any step failed.
#
# Packages: the device image has torch (CUDA), CuPy and a CPU onnxruntime; the rest comes from
# `make gpu-wheelhouse` (built here, Python 3.12 manylinux wheels in .gpu-wheels/, carried with
# the device tool's `carry`). onnxruntime-gpu (~256 MB) and TensorRT (> 1 GB) exceed the tool's
# 64 MiB transfer limit, so on the lent machines steps 1-2 fail for those engines until a
# machine that has them runs this script; docs/engines.md says so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
RESULTS="$OUT/steps.tsv"
: > "$RESULTS"

step() {  # step NAME LIMIT_S COMMAND...: run, record status and time, never stop the script
    local name=$1 limit=$2 start status
    shift 2
    start=$(date +%s)
    echo "=== $name (limit ${limit}s)"
    if timeout "$limit" "$@"; then status=ok; else status="FAILED($?)"; fi
    printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" >> "$RESULTS"
}

if [ -d .gpu-wheels ] && ls .gpu-wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-site .gpu-wheels/*.whl
    export PYTHONPATH="/tmp/gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

step gpu 30 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
step packages 60 "$PY" - <<'PY'
import importlib, sys
failed = []
for name in ("torch", "onnxruntime", "tensorrt", "nnunetv2", "bentoml", "cerebrascan"):
    try:
        module = importlib.import_module(name)
        print(f"{name:14s} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # report every missing package, then fail once
        print(f"{name:14s} MISSING {type(exc).__name__}: {str(exc)[:100]}")
        failed.append(name)
import onnxruntime, torch
print("onnxruntime providers", onnxruntime.get_available_providers())
print("torch cuda", torch.cuda.is_available(), torch.version.cuda)
if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
    failed.append("onnxruntime-gpu")
if not torch.cuda.is_available():
    failed.append("torch.cuda")
sys.exit(f"missing: {failed}" if failed else 0)
PY
step engine-tests 200 env CEREBRASCAN_TEST_DEVICE=cuda "$PY" -m pytest -q -rA -p no:cacheprovider \
    --junitxml="$OUT/engine_tests.xml" tests/test_gpu_engines.py tests/test_gpu_paths.py tests/test_engines.py
step nnunet-brats 200 "$PY" benchmarks/bench_nnunet.py --device cuda --network brats --case crop \
    --tta both --repeats 3 --engines torch-fp16 torch-fp16-compile --json "$OUT/bench_nnunet.json"
step serve-concurrency 150 env OUT="$OUT/serve" LEVELS="1 4 8" bash benchmarks/gpu_serve_check.sh

"$PY" - "$RESULTS" "$OUT/gpu_check.json" <<'PY'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
print(f"{'step':20s} {'status':12s} seconds")
for name, status, seconds in rows:
    print(f"{name:20s} {status:12s} {seconds}")
json.dump([dict(zip(("step", "status", "seconds"), r)) for r in rows], open(sys.argv[2], "w"), indent=2)
PY
if grep -q FAILED "$RESULTS"; then echo "GPU CHECK FAILED"; exit 1; fi
echo "GPU CHECK PASSED"
