"""The precision guard's reference: ONNX Runtime fp32 on the CPU, on the reference tile.

Every engine that can serve a reduced precision (ONNX Runtime's TensorRT EP, native TensorRT,
OpenVINO) compares its candidate against the same fp32 logits; bf16 and int8 must also be
admitted by the model folder's held-out record (``precisions.json``). The comparisons
themselves are maths in :mod:`runners.precision_guard`, the record's I/O is
:mod:`runners.precision_record`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from runners.engine_cache import file_digest
from runners.precision_guard import (
    HELD_OUT_PRECISIONS,
    PrecisionDecision,
    admit_by_held_out_record,
    compare_precisions,
    reference_tile,
)
from runners.precision_record import read_precision_record, separate_network_digest
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
    require_held_out_record: bool = True,
    onnx_sha256: str | None = None,
) -> PrecisionDecision:
    """Whether ``predict_tiles`` at ``precision`` may serve: compared with fp32 on the CPU.

    fp16: reference-tile agreement and largest probability difference. bf16 / int8: the
    reference tile's agreement here, then the held-out record of ``model_path``'s folder
    (:func:`runners.precision_guard.admit_by_held_out_record`); their largest probability
    difference is reported only.

    Args:
        model_path: the ONNX file both run.
        spec: the network's contract (reference tile, output kind).
        predict_tiles: the candidate engine's network call at ``precision``.
        settings: the guard's bounds (``precision_guard_*``).
        precision: the reduced precision asked for.
        engine: the engine's name, for the note when it fails.
        engine_errors: the exceptions that mean "this precision does not run here" (the
            decision is then fp32 with the reason), not a bug to raise.
        require_held_out_record: False only for the tool that measures the record
            (``cerebrascan pipeline precisions``): the reference tile alone decides.
        onnx_sha256: the ONNX file's SHA-256 when the caller has it (else computed).

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
    decision = compare_precisions(
        np.asarray(reference, dtype=np.float32),
        candidate,
        spec,
        requested=precision,
        min_agreement=settings.precision_guard_min_agreement,
        max_probability_difference=settings.precision_guard_max_probability_difference,
        probability_difference_decides=precision not in HELD_OUT_PRECISIONS,
    )
    if (
        decision.used == "fp32"
        or precision not in HELD_OUT_PRECISIONS
        or not require_held_out_record
    ):
        return decision
    folder = model_path.parent
    reading = read_precision_record(folder)
    entry = reading.record.precisions.get(precision) if reading.record else None
    note, dice_change = admit_by_held_out_record(
        reading.record,
        record_problem=reading.problem,
        onnx_sha256=onnx_sha256 or file_digest(model_path),
        precision=precision,
        max_dice_change=settings.precision_guard_max_dice_change,
        model_folder=str(folder),
        network_sha256=separate_network_digest(folder, entry.model)
        if entry is not None and entry.model
        else None,
    )
    if note is not None:
        return replace(decision, used="fp32", note=note, held_out_dice_change=dice_change)
    return replace(decision, held_out_dice_change=dice_change)
