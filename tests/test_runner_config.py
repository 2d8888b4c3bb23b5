"""Runner construction from settings, and the serving path staying free of torch."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest

from cerebrascan.settings import Settings
from runners.onnx_runner import OnnxSegmentationRunner, RunnerConfigError
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec
from tests.conftest import REPO_ROOT


def _bundled() -> tuple[object, ModelSpec]:
    folder = Settings().bundled_model_dir
    return folder / "model.onnx", ModelSpec.model_validate_json(
        (folder / "model_spec.json").read_text()
    )


def test_cpu_provider_from_settings() -> None:
    onnx_path, spec = _bundled()
    runner = OnnxSegmentationRunner(onnx_path, spec, RunnerSettings())
    assert runner.providers == ["CPUExecutionProvider"]


def test_intra_op_spinning_comes_from_settings() -> None:
    onnx_path, spec = _bundled()
    key = "session.intra_op.allow_spinning"
    quiet = OnnxSegmentationRunner(onnx_path, spec, RunnerSettings(intra_op_spinning=False))
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    default = OnnxSegmentationRunner(onnx_path, spec, RunnerSettings())
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.session.get_session_options().get_session_config_entry(key)  # ORT's default: spin


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this build has CUDA"
)
def test_unavailable_provider_is_refused_with_its_name() -> None:
    onnx_path, spec = _bundled()
    settings = RunnerSettings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RunnerConfigError, match=r"\['CUDAExecutionProvider'\] not available"):
        OnnxSegmentationRunner(onnx_path, spec, settings)


def test_serving_imports_no_torch(tmp_path: object) -> None:
    code = (
        "import sys, service; "
        "bad = [m for m in ('torch', 'dynamic_network_architectures', 'nnunetv2') "
        "if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={"CEREBRASCAN_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
