"""Every GPU engine on a real CUDA device: the provider actually used and agreement with fp32.

Runs only where ``CEREBRASCAN_TEST_DEVICE=cuda`` (``benchmarks/gpu_check.sh`` on a lent GPU
machine); CI has no GPU, so here each test is skipped with that reason. An engine whose package
is missing on the GPU machine FAILS (it does not skip): the check must not pass by running less.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from runners.factory import build_runner
from runners.onnx_runner import OnnxSegmentationRunner
from runners.precision_guard import reference_tile
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
ON_GPU = os.environ.get("CEREBRASCAN_TEST_DEVICE") == "cuda"
pytestmark = pytest.mark.skipif(not ON_GPU, reason="needs CEREBRASCAN_TEST_DEVICE=cuda (a GPU)")

GPU_ENGINES = {
    "ort-cuda-fp32": {"providers": ["CUDAExecutionProvider"]},
    "ort-trt-fp32": {"providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]},
    "ort-trt-fp16": {
        "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
        "precision": "fp16",
    },
    "tensorrt-fp32": {"engine": "tensorrt", "device": "cuda"},
    "tensorrt-fp16": {"engine": "tensorrt", "device": "cuda", "precision": "fp16"},
    "torch-fp32": {"engine": "torch", "device": "cuda"},
    "torch-fp16": {"engine": "torch", "device": "cuda", "precision": "fp16"},
    "torch-fp16-compile": {
        "engine": "torch",
        "device": "cuda",
        "precision": "fp16",
        "torch_compile": True,
    },
}
EXPECTED_FIRST_PROVIDER = {
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
    "tensorrt": "tensorrt-",
    "torch": "torch:cuda",
}


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


@pytest.fixture(scope="module")
def volume(spec: ModelSpec) -> np.ndarray:
    """A volume of several overlapping tiles along x."""
    tile = reference_tile(spec)[0]
    return np.ascontiguousarray(np.concatenate([tile, tile[:, :40], tile[:, 8:]], axis=1))


@pytest.mark.parametrize("name", sorted(GPU_ENGINES))
@pytest.mark.parametrize("mirror_tta", [False, True])
def test_gpu_engine_runs_where_configured_and_agrees_with_cpu_fp32(
    name, mirror_tta, spec, volume, tmp_path
) -> None:
    settings = RunnerSettings(tile_batch_size=8, mirror_tta=mirror_tta, **GPU_ENGINES[name])
    runner = build_runner(DEFAULT_MODEL, spec, settings, tmp_path / "engine-cache")
    prefix = next(v for k, v in EXPECTED_FIRST_PROVIDER.items() if name.startswith(k))
    assert runner.providers[0].startswith(prefix), (name, runner.providers)
    if settings.precision == "fp32":
        assert runner.precision == "fp32"
    cpu_tta = OnnxSegmentationRunner(
        DEFAULT_MODEL / "model.onnx", spec, RunnerSettings(mirror_tta=mirror_tta)
    )
    reference = np.argmax(cpu_tta.predict(volume).probabilities, axis=0)
    labels = np.argmax(runner.predict(volume).probabilities, axis=0)
    agreement = float(np.mean(labels == reference))
    print(f"GPU-ENGINE {name} tta={mirror_tta} precision={runner.precision} agree={agreement:.6f}")
    assert agreement >= 0.999, (name, agreement)
