"""Open Inference Protocol tensors -> a :class:`Study` (pure; no I/O, no gRPC calls).

The segmentation model's OIP contract:

- input ``IMAGE``, ``FP32``, shape ``[1, 4, D, H, W]``: the four modalities in the model's order
  (t1n, t1c, t2w, t2f) on one voxel grid, axes (i, j, k) as in NIfTI;
- parameters (of the request, or of the ``IMAGE`` input) ``spacing``: JSON ``[si, sj, sk]`` in
  mm, and ``affine``: JSON 4x4 voxel -> scanner RAS mm matrix whose column norms are the
  spacing; optional ``options``: JSON of ``AnalyzeOptions`` (as the HTTP ``options`` field);
- outputs ``SEGMENTATION``, ``UINT8``, ``[1, D, H, W]`` (labels 0-3 on the input grid) and
  ``FINDINGS``, ``BYTES``, ``[1]`` (the JSON answer ``POST /analyze`` gives).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.inputs.study import Study, check_grid, check_voxel_values

INPUT_NAME = "IMAGE"
SEGMENTATION_OUTPUT = "SEGMENTATION"
FINDINGS_OUTPUT = "FINDINGS"
OUTPUT_NAMES = (SEGMENTATION_OUTPUT, FINDINGS_OUTPUT)
SPACING_TOLERANCE = 1e-3
"""Relative difference allowed between ``spacing`` and the affine's column norms."""


class OipRequestError(ValueError):
    """The request does not fit the model's OIP contract (gRPC INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class InferRequest:
    """A decoded ``ModelInfer`` request: the study, its options and the outputs asked for."""

    study: Study
    options: dict[str, Any]
    outputs: tuple[str, ...]
    """Outputs asked for (all when the request names none)."""


def _parameter_value(parameter: Any) -> Any:
    """The set value of an ``InferParameter`` (a protobuf oneof)."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def _json_parameter(name: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        raise OipRequestError(f"parameter {name!r} must be a JSON string, got {type(raw).__name__}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise OipRequestError(f"parameter {name!r} is not valid JSON: {raw[:80]!r}") from exc


def parse_spacing(raw: Any) -> tuple[float, float, float]:
    """``[si, sj, sk]`` mm, each finite and > 0.

    Raises:
        OipRequestError: anything else (the message shows the value).
    """
    value = _json_parameter("spacing", raw)
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(np.isfinite(v) and v > 0 for v in value)
    ):
        raise OipRequestError(f"parameter 'spacing' must be 3 positive numbers (mm), got {raw!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def parse_affine(raw: Any) -> npt.NDArray[np.float64]:
    """A finite, invertible 4x4 matrix with last row ``[0, 0, 0, 1]``.

    Raises:
        OipRequestError: anything else (the message shows the value).
    """
    value = _json_parameter("affine", raw)
    try:
        affine = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise OipRequestError(f"parameter 'affine' must be a 4x4 matrix, got {raw!r}") from exc
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise OipRequestError(f"parameter 'affine' must be a finite 4x4 matrix, got {raw!r}")
    if not np.allclose(affine[3], [0, 0, 0, 1]) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise OipRequestError(
            f"parameter 'affine' must be invertible with last row [0, 0, 0, 1], got {raw!r}"
        )
    return affine


def decode_infer_request(
    request: Any, modalities: tuple[str, ...], *, max_voxels: int
) -> InferRequest:
    """Check a ``ModelInferRequest`` against the contract and decode it into a :class:`Study`.

    Args:
        request: ``inference.ModelInferRequest``.
        modalities: the served model's modalities, in channel order.
        max_voxels: the most voxels the grid may have (``limits.max_voxels``, as for NIfTI).

    Raises:
        OipRequestError: a wrong input name, datatype, shape or byte count; missing or bad
            ``spacing`` / ``affine``; spacing that disagrees with the affine; unknown outputs.
        InputError: a grid or voxels the pipeline cannot take, by the rules NIfTI uploads
            follow (:func:`~cerebrascan.inputs.study.check_grid`, ``check_voxel_values``).
    """
    channels = len(modalities)
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [tensor.name for tensor in request.inputs]
        raise OipRequestError(f"expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise OipRequestError(
            f"input {INPUT_NAME!r} must have datatype FP32, got {tensor.datatype}"
        )
    shape = tuple(int(n) for n in tensor.shape)
    if len(shape) != 5 or shape[0] != 1 or shape[1] != channels or min(shape[2:]) < 1:
        raise OipRequestError(
            f"input {INPUT_NAME!r} must have shape [1, {channels}, D, H, W], got {list(shape)}"
        )
    expected_bytes = int(np.prod(shape)) * 4
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise OipRequestError(
                f"expected 1 raw input buffer, got {len(request.raw_input_contents)}"
            )
        raw = request.raw_input_contents[0]
        if len(raw) != expected_bytes:
            raise OipRequestError(
                f"input {INPUT_NAME!r} of shape {list(shape)} needs {expected_bytes} bytes of "
                f"FP32, got {len(raw)}"
            )
        flat = np.frombuffer(raw, dtype="<f4")
    else:
        values = tensor.contents.fp32_contents
        if len(values) != expected_bytes // 4:
            raise OipRequestError(
                f"input {INPUT_NAME!r} of shape {list(shape)} needs {expected_bytes // 4} FP32 "
                f"values, got {len(values)}"
            )
        flat = np.asarray(values, dtype=np.float32)
    images = flat.reshape(shape[1:]).astype(np.float32)
    parameters = {key: _parameter_value(value) for key, value in tensor.parameters.items()}
    parameters.update({key: _parameter_value(value) for key, value in request.parameters.items()})
    for name in ("spacing", "affine"):
        if name not in parameters:
            raise OipRequestError(
                f"parameter {name!r} is required (JSON string, on the request or the IMAGE input)"
            )
    spacing = parse_spacing(parameters["spacing"])
    affine = parse_affine(parameters["affine"])
    norms = spacing_from_affine(affine)
    if not np.allclose(norms, spacing, rtol=SPACING_TOLERANCE, atol=0):
        raise OipRequestError(
            f"parameter 'spacing' {list(spacing)} disagrees with the affine's voxel sizes "
            f"{[round(float(n), 6) for n in norms]}"
        )
    options: dict[str, Any] = {}
    if "options" in parameters:
        parsed = _json_parameter("options", parameters["options"])
        if not isinstance(parsed, dict):
            raise OipRequestError(f"parameter 'options' must be a JSON object, got {parsed!r}")
        options = parsed
    asked = tuple(output.name for output in request.outputs)
    unknown = [name for name in asked if name not in OUTPUT_NAMES]
    if unknown:
        raise OipRequestError(f"unknown output(s) {unknown}; this model has {list(OUTPUT_NAMES)}")
    check_grid(shape[2:], affine, field=INPUT_NAME, max_voxels=max_voxels)
    for channel, modality in enumerate(modalities):
        check_voxel_values(images[channel], field=f"{INPUT_NAME}[{modality}]")
    return InferRequest(
        study=Study(images=images, affine=affine, modalities=tuple(modalities)),
        options=options,
        outputs=asked or OUTPUT_NAMES,
    )


def serialize_bytes_elements(elements: list[bytes]) -> bytes:
    """A BYTES tensor's raw contents: each element as a little-endian uint32 length + bytes."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)
