"""The one runner factory: the engine that settings ask for (``runner.engine``)."""

from __future__ import annotations

from pathlib import Path

from runners.protocol import TileRunner
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec


def build_runner(
    model_folder: Path, spec: ModelSpec, settings: RunnerSettings, engine_cache_dir: Path
) -> TileRunner:
    """The runner for ``settings.engine`` on ``settings.device``.

    The one place an engine is chosen; every engine satisfies :class:`runners.protocol.TileRunner`
    (its ``predict`` is :func:`runners.window.predict_volume` around its network call).

    Args:
        model_folder: the model folder (``model.onnx``, ``model_spec.json``, weights).
        spec: its spec.
        settings: runner settings.
        engine_cache_dir: TensorRT engine and timing caches.

    Returns:
        The engine, built and (for reduced precision) checked by the precision guard.

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
