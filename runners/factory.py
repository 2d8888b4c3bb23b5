"""Build the runner that settings ask for (``runner.engine``)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cerebrascan.settings import RunnerSettings
from runners.precision_guard import PrecisionDecision
from runners.prediction import RunnerPrediction
from schemas.model_spec import ModelSpec


class SegmentationRunner(Protocol):
    """What every engine provides (ONNX Runtime, torch, TensorRT)."""

    name: str
    spec: ModelSpec
    providers: list[str]
    precision: str
    decision: PrecisionDecision

    def predict(
        self,
        volume: npt.NDArray[np.float32],
        *,
        mirror_tta: bool,
        tta_disagreement: bool = False,
    ) -> RunnerPrediction:
        """Probabilities of a preprocessed ``(C, *spatial)`` volume on the network grid."""
        ...


def build_runner(
    model_folder: Path, spec: ModelSpec, settings: RunnerSettings, engine_cache_dir: Path
) -> SegmentationRunner:
    """The runner for ``settings.engine`` on ``settings.device``.

    Args:
        model_folder: the model folder (``model.onnx``, ``model_spec.json``, weights).
        spec: its spec.
        settings: runner settings.
        engine_cache_dir: TensorRT engine and timing caches.

    Raises:
        RunnerConfigError: the engine cannot run here (missing package, device or provider).
    """
    if settings.engine == "torch":
        from runners.torch_runner import TorchSegmentationRunner

        return TorchSegmentationRunner(model_folder, spec, settings)
    if settings.engine == "tensorrt":
        from runners.tensorrt_runner import TensorRTSegmentationRunner

        return TensorRTSegmentationRunner(
            model_folder / "model.onnx", spec, settings, engine_cache_dir
        )
    from runners.onnx_runner import OnnxSegmentationRunner

    return OnnxSegmentationRunner(model_folder / "model.onnx", spec, settings, engine_cache_dir)
