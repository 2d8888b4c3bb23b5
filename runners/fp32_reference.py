"""The precision guard's reference: ONNX Runtime fp32 on the CPU, on the reference tile.

Every engine that can serve a reduced precision (ONNX Runtime's TensorRT EP, native TensorRT,
OpenVINO) compares its candidate against the same fp32 logits; the comparison itself is maths
in :mod:`runners.precision_guard`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from runners.precision_guard import PrecisionDecision, compare_precisions, reference_tile
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec


def guard_reduced_precision(
    model_path: Path,
    spec: ModelSpec,
    predict_tiles: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
    settings: RunnerSettings,
    *,
    precision: str,
    engine: str,
    engine_errors: tuple[type[BaseException], ...] = (RuntimeError,),
) -> PrecisionDecision:
    """Whether ``predict_tiles`` at ``precision`` may serve: compared with fp32 on the CPU.

    Args:
        model_path: the ONNX file both run.
        spec: the network's contract (reference tile, output kind).
        predict_tiles: the candidate engine's network call at ``precision``.
        settings: the guard's bounds (``precision_guard_*``).
        precision: the reduced precision asked for.
        engine: the engine's name, for the note when it fails.
        engine_errors: the exceptions that mean "this precision does not run here" (the
            decision is then fp32 with the reason), not a bug to raise.

    Returns:
        The decision (``used`` fp32 with a ``note`` when refused).
    """
    tile = reference_tile(spec)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (reference,) = session.run([spec.output_name], {spec.input_name: tile})
    try:
        candidate = predict_tiles(tile)
    except engine_errors as exc:
        return PrecisionDecision(
            precision, "fp32", note=f"{precision} {engine} failed: {exc}"[:300]
        )
    return compare_precisions(
        np.asarray(reference, dtype=np.float32),
        candidate,
        spec,
        requested=precision,
        min_agreement=settings.precision_guard_min_agreement,
        max_probability_difference=settings.precision_guard_max_probability_difference,
    )
