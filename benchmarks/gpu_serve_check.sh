#!/usr/bin/env bash
# Serving-at-scale check on a lent GPU machine (prepared; run it there, not on cpu2).
#
# Runs benchmarks/load_test.py against a real `bentoml serve service:CerebraScan` twice:
#   1. the two-service design (runner service with cross-case batching, the default);
#   2. the network in the front's process (CEREBRASCAN_BATCHING__REMOTE_RUNNER=false);
# both with ONNX Runtime on CUDA, at 1, 2, 4 and 8 concurrent clients, and checks the target
# "throughput at 4 concurrent >= 2x sequential" for the default design.
#
# Needs: the project installed in $VENV (default .venv) with onnxruntime-gpu in place of
# onnxruntime (the GPU machine has no network: install before, or carry a venv), an NVIDIA GPU.
# Writes JSON results and the nvidia-smi log under $OUT (default benchmarks/results/gpu).
#
#   OUT=/tmp/out bash benchmarks/gpu_serve_check.sh            # about 5-8 minutes
#   LEVELS="1 4" PROVIDERS='["TensorrtExecutionProvider","CUDAExecutionProvider"]' bash ...
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
OUT=${OUT:-benchmarks/results/gpu}
LEVELS=${LEVELS:-"1 2 4 8"}
PROVIDERS=${PROVIDERS:-'["CUDAExecutionProvider"]'}
TILE_BATCH=${TILE_BATCH:-8}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
"$PY" -c 'import onnxruntime as o; p = o.get_available_providers(); print(p); assert "CUDAExecutionProvider" in p, "install onnxruntime-gpu"'

# GPU utilisation while the load runs, one sample a second
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/nvidia_smi.csv" &
SMI_PID=$!
trap 'kill "$SMI_PID" 2>/dev/null || true' EXIT

COMMON=(
  --levels $LEVELS
  --phantoms 4
  --env "CEREBRASCAN_RUNNER__PROVIDERS=$PROVIDERS"
  --env "CEREBRASCAN_RUNNER__TILE_BATCH_SIZE=$TILE_BATCH"
  --env "CEREBRASCAN_BATCHING__FRONT_THREADS=8"
  --env "CEREBRASCAN_BATCHING__MAX_BATCH_SIZE=8"
)

"$PY" benchmarks/load_test.py "${COMMON[@]}" \
  --out "$OUT/load_gpu_runner_service.json"
"$PY" benchmarks/load_test.py "${COMMON[@]}" \
  --env CEREBRASCAN_BATCHING__REMOTE_RUNNER=false \
  --out "$OUT/load_gpu_in_process.json"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for name in ("load_gpu_runner_service.json", "load_gpu_in_process.json"):
    report = json.loads((out / name).read_text())
    print(name, "runner transfer:", report.get("runner_transfer"))
    for level in report["levels"]:
        print(
            f"  c={level['concurrency']}: {level['cases_per_minute']} cases/min, "
            f"p50 {level['p50_s']} s, p95 {level['p95_s']} s, "
            f"mean batch {level['mean_batch_size']}, x{level.get('speedup_vs_sequential')}"
        )
default = json.loads((out / "load_gpu_runner_service.json").read_text())
four = next((l for l in default["levels"] if l["concurrency"] == 4), None)
if four is None:
    sys.exit("no concurrency-4 level measured")
speedup = four.get("speedup_vs_sequential") or 0
print(f"target: throughput at 4 concurrent >= 2x sequential: x{speedup}",
      "MET" if speedup >= 2 else "NOT MET")
EOF
