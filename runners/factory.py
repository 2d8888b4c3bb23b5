"""The one runner factory: the engine that settings ask for (``runner.engine``)."""

from __future__ import annotations

from pathlib import Path

from runners.openvino_runner import openvino_available, openvino_offers
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
        engine_cache_dir: TensorRT engine and timing caches, compiled OpenVINO models.

    Returns:
        The engine, built and (for reduced precision) checked by the precision guard.

    Raises:
        RunnerConfigError: the engine cannot run here (missing package, device or provider,
            or a precision the CPU lacks).
    """
    engine = resolve_engine(settings)
    precision = resolve_precision(settings, engine)
    if precision != settings.precision:
        settings = settings.model_copy(update={"precision": precision})
    if engine == "openvino":
        from runners.openvino_runner import OpenVINOSegmentationRunner

        return OpenVINOSegmentationRunner(
            model_folder / "model.onnx", spec, settings, engine_cache_dir
        )
    if engine == "torch":
        from runners.torch_runner import TorchSegmentationRunner

        return TorchSegmentationRunner(model_folder, spec, settings)
    if engine == "tensorrt":
        from runners.tensorrt_runner import TensorRTSegmentationRunner

        return TensorRTSegmentationRunner(
            model_folder / "model.onnx", spec, settings, engine_cache_dir
        )
    from runners.onnx_runner import OnnxSegmentationRunner

    return OnnxSegmentationRunner(model_folder / "model.onnx", spec, settings, engine_cache_dir)


def resolve_engine(settings: RunnerSettings) -> str:
    """The engine ``settings.engine`` names; ``auto`` becomes one that exists here.

    ``auto``: OpenVINO when the network runs on the CPU (``device`` cpu and ONNX Runtime
    ``providers`` CPU only) and the openvino package is installed: it runs the same ONNX faster
    than ONNX Runtime's CPU provider. Else ONNX Runtime, with the configured providers.
    """
    if settings.engine != "auto":
        return settings.engine
    on_cpu = settings.device == "cpu" and settings.providers == ["CPUExecutionProvider"]
    if on_cpu and openvino_available():
        return "openvino"
    return "onnxruntime"


def resolve_precision(settings: RunnerSettings, engine: str) -> str:
    """The precision ``settings.precision`` names for ``engine``; ``auto`` becomes one.

    ``auto``: bf16 when the engine is OpenVINO and the CPU plugin offers BF16 (AMX or AVX-512
    BF16): the network then runs ~3x faster than fp32 on such CPUs, and the precision guard
    still decides whether bf16 serves (reference tile here, the model folder's held-out record),
    falling back to fp32 with the reason. fp32 for every other engine and CPU: reduced precision
    on a GPU (fp16) is asked for by name.
    """
    if settings.precision != "auto":
        return settings.precision
    if engine == "openvino" and openvino_offers("bf16"):
        return "bf16"
    return "fp32"
