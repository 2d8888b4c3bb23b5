"""The GPU engines' defences that a machine without a GPU can still exercise.

What needs a GPU to fail (a provider that really fails to initialise, TensorRT's libraries,
several threads on one execution context) is checked by ``benchmarks/gpu_check.sh`` on a lent
machine; here: the decisions those paths take, with the inputs they take them on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runners.errors import EngineOutputError, RunnerConfigError
from runners.gpu_setup import (
    UNKNOWN_GPU,
    parse_nvidia_smi_identity,
    tensorrt_library_files,
)
from runners.onnx_runner import check_active_providers, provider_options
from runners.settings import RunnerSettings
from runners.window import predict_volume
from schemas.model_spec import ModelSpec

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "default"


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


def test_a_silent_fallback_to_the_cpu_stops_the_start() -> None:
    configured = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(RunnerConfigError, match="asks for CUDAExecutionProvider first"):
        check_active_providers(configured, ["CPUExecutionProvider"])
    with pytest.raises(RunnerConfigError, match="TensorrtExecutionProvider first"):
        check_active_providers(
            ["TensorrtExecutionProvider", *configured],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
    check_active_providers(configured, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    check_active_providers(["CPUExecutionProvider"], ["CPUExecutionProvider"])


def test_tensorrt_engine_cache_is_off_for_an_unidentified_gpu(spec, tmp_path) -> None:
    settings = RunnerSettings(
        providers=["TensorrtExecutionProvider", "CPUExecutionProvider"], device="cuda"
    )
    unknown = provider_options(
        spec, settings, onnx_sha256="d" * 64, engine_cache_dir=tmp_path, precision="fp32"
    )[0][1]
    assert unknown["trt_engine_cache_enable"] is False
    assert unknown["trt_timing_cache_enable"] is False
    known = provider_options(
        spec,
        settings,
        onnx_sha256="d" * 64,
        engine_cache_dir=tmp_path,
        precision="fp32",
        gpu=("NVIDIA H200", "9.0"),
    )[0][1]
    assert known["trt_engine_cache_enable"] is True


def test_cuda_provider_options_come_from_settings(spec) -> None:
    settings = RunnerSettings(
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        device="cuda:0",
        cuda_conv_algo_search="EXHAUSTIVE",
        allow_tf32=True,
        gpu_memory_limit_mb=2048,
    )
    (_, cuda), _ = provider_options(
        spec, settings, onnx_sha256="", engine_cache_dir=None, precision="fp32"
    )
    assert cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert cuda["use_tf32"] == 1
    assert cuda["gpu_mem_limit"] == 2048 << 20


def test_nvidia_smi_identity_parsing() -> None:
    assert parse_nvidia_smi_identity("NVIDIA H100 80GB HBM3, 9.0\n") == (
        "NVIDIA H100 80GB HBM3",
        "9.0",
    )
    # An old driver answers the compute_cap query with an error line, not two fields.
    assert parse_nvidia_smi_identity('Field "compute_cap" is not a valid field\n') == UNKNOWN_GPU
    assert parse_nvidia_smi_identity("") == UNKNOWN_GPU
    assert parse_nvidia_smi_identity("NVIDIA A100, [N/A]") == UNKNOWN_GPU


def test_tensorrt_libraries_load_in_dependency_order(tmp_path) -> None:
    for name in (
        "libnvonnxparser.so.10",
        "libnvinfer_plugin.so.10",
        "libnvinfer.so.10",
        "libnvinfer.so.10.9.0",
        "libnvinfer_builder_resource.so.10.9.0",
    ):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in tensorrt_library_files(tmp_path)] == [
        "libnvinfer.so.10",
        "libnvinfer_plugin.so.10",
        "libnvonnxparser.so.10",
    ]
    assert tensorrt_library_files(tmp_path / "missing") == []


def test_native_tensorrt_without_torch_is_a_config_error_not_an_import_error() -> None:
    """The GPU bento has no torch: engine=tensorrt must stop with a message naming it."""
    program = """
import sys
sys.modules["torch"] = None  # as if torch were not installed
from pathlib import Path
from runners.errors import RunnerConfigError
from runners.factory import build_runner
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec
folder = Path("models/default")
spec = ModelSpec.model_validate_json((folder / "model_spec.json").read_text())
try:
    build_runner(folder, spec, RunnerSettings(engine="tensorrt", device="cuda"), Path("/tmp/x"))
except RunnerConfigError as exc:
    print("REFUSED", exc)
"""
    completed = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "REFUSED" in completed.stdout
    assert "torch (" in completed.stdout


def test_non_finite_logits_fail_the_study_instead_of_becoming_labels(spec) -> None:
    """A NaN from the engine (an uninitialised buffer, an fp16 overflow) is refused.

    The engine is a test double: a network returning NaN cannot be caused with the shipped
    weights on a CPU.
    """
    volume = np.zeros((len(spec.modalities), *spec.patch_size), dtype=np.float32)

    def nan_network(tiles: np.ndarray) -> np.ndarray:
        out = np.zeros((tiles.shape[0], spec.num_outputs, *spec.patch_size), dtype=np.float32)
        out[0, 0, 0, 0, 0] = np.nan
        return out

    with pytest.raises(EngineOutputError, match="1 non-finite logits"):
        predict_volume(
            volume,
            spec,
            nan_network,
            device_window=None,
            step=0.5,
            batch_size=2,
            mirror_tta=False,
        )
