"""Slice geometry read from DICOM headers, and the checks a stack of slices must pass (maths).

These checks run on headers before any pixel is decoded, so a broken series is refused with a
message that says what is wrong (dcm2niix and SimpleITK pass several of these cases silently:
a missing slice, a sheared stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from cerebrascan.inputs.dicom.index import IndexedSeries, frame_count, header_attribute

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) to NIfTI's RAS: x and y change sign."""


class GeometryError(ValueError):
    """A series whose slices do not make one regular, unsheared volume (message says why)."""


@dataclass(frozen=True)
class Frame:
    """Geometry of one slice: where it lies and how it is oriented (LPS, mm)."""

    position: npt.NDArray[np.float64]
    row_direction: npt.NDArray[np.float64]
    column_direction: npt.NDArray[np.float64]
    pixel_spacing: tuple[float, float]
    """(between rows, between columns) in mm, as DICOM's PixelSpacing."""
    rows: int
    columns: int


def _floats(value: object, count: int, what: str) -> npt.NDArray[np.float64]:
    if value is None:
        raise GeometryError(f"{what} is missing")
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{what} {value!r} is not numeric") from exc
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise GeometryError(f"{what} {value!r} does not hold {count} finite numbers")
    return numbers


def _frame(
    position: object, orientation: object, spacing: object, rows: int, columns: int, where: str
) -> Frame:
    cosines = _floats(orientation, 6, f"{where}: ImageOrientationPatient")
    row_direction, column_direction = cosines[:3], cosines[3:]
    for vector in (row_direction, column_direction):
        if abs(np.linalg.norm(vector) - 1) > 1e-3:
            raise GeometryError(f"{where}: ImageOrientationPatient {list(cosines)} is not unit")
    if abs(float(row_direction @ column_direction)) > 1e-3:
        raise GeometryError(f"{where}: ImageOrientationPatient {list(cosines)} is not orthogonal")
    pixel_spacing = _floats(spacing, 2, f"{where}: PixelSpacing")
    if np.any(pixel_spacing <= 0):
        raise GeometryError(f"{where}: PixelSpacing {list(pixel_spacing)} is not positive")
    return Frame(
        position=_floats(position, 3, f"{where}: ImagePositionPatient"),
        row_direction=row_direction / np.linalg.norm(row_direction),
        column_direction=column_direction / np.linalg.norm(column_direction),
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        rows=rows,
        columns=columns,
    )


def _multiframe_frames(header: Dataset, where: str) -> list[Frame]:
    count = frame_count(header)
    shared = header.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != count:
        raise GeometryError(
            f"{where}: a multiframe image of {count} frames without per-frame functional "
            "groups (no per-frame geometry)"
        )
    frames = []
    for number, item in enumerate(per_frame, start=1):

        def macro(keyword: str, item: Dataset = item) -> Dataset | None:
            for source in (item, shared_item):
                sequence = source.get(keyword)
                if sequence:
                    return sequence[0]  # type: ignore[no-any-return]
            return None

        position = macro("PlanePositionSequence")
        orientation = macro("PlaneOrientationSequence")
        measures = macro("PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise GeometryError(
                f"{where}: frame {number} has no plane position, orientation or pixel measures "
                "(no per-frame geometry)"
            )
        frames.append(
            _frame(
                position.get("ImagePositionPatient"),
                orientation.get("ImageOrientationPatient"),
                measures.get("PixelSpacing"),
                int(header.Rows),
                int(header.Columns),
                f"{where} frame {number}",
            )
        )
    return frames


def series_frames(series: IndexedSeries) -> list[Frame]:
    """The geometry of every slice of a series, from headers only.

    Raises:
        GeometryError: a slice without position, orientation or pixel spacing, or a
            multiframe image without per-frame geometry or frame of reference.
    """
    frames: list[Frame] = []
    for instance in series.instances:
        header = instance.header
        where = f"file {instance.name!r}"
        if "FrameOfReferenceUID" not in header:
            raise GeometryError(f"{where}: no FrameOfReferenceUID (no patient coordinates)")
        try:
            if frame_count(header) > 1 or "PerFrameFunctionalGroupsSequence" in header:
                frames.extend(_multiframe_frames(header, where))
            else:
                frames.append(
                    _frame(
                        header.get("ImagePositionPatient"),
                        header.get("ImageOrientationPatient"),
                        header.get("PixelSpacing"),
                        int(header.Rows),
                        int(header.Columns),
                        where,
                    )
                )
        except GeometryError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise GeometryError(f"{where}: malformed geometry attributes ({exc})") from None
    return frames


@dataclass(frozen=True)
class StackGeometry:
    """A checked stack: slice step and the slices' order along the normal."""

    slice_step_mm: float
    order: tuple[int, ...]
    normal: npt.NDArray[np.float64]


def check_stack(
    frames: Sequence[Frame], *, max_gap_ratio: float = 1.5, tolerance_mm: float = 0.01
) -> StackGeometry:
    """Check that slices form one regular volume: same orientation, size and spacing, distinct
    positions evenly stepped along the normal, no in-plane shear.

    Args:
        frames: every slice's geometry, in any order.
        max_gap_ratio: a step over this multiple of the median step is a missing slice.
        tolerance_mm: allowed deviation of steps and in-plane offsets (or 1 % of the step).

    Raises:
        GeometryError: naming the problem (mixed orientations, missing slice, irregular
            spacing, sheared stack, duplicate positions, mixed sizes).
    """
    if len(frames) < 2:
        raise GeometryError(f"{len(frames)} slice(s): a volume needs at least 2")
    first = frames[0]
    for number, frame in enumerate(frames[1:], start=2):
        if (
            np.max(np.abs(frame.row_direction - first.row_direction)) > 1e-4
            or np.max(np.abs(frame.column_direction - first.column_direction)) > 1e-4
        ):
            this = np.round(np.r_[frame.row_direction, frame.column_direction], 4).tolist()
            that = np.round(np.r_[first.row_direction, first.column_direction], 4).tolist()
            raise GeometryError(
                f"mixed orientations: slice {number} is oriented {this}, slice 1 {that}"
            )
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise GeometryError(
                f"mixed slice sizes: {frame.rows}x{frame.columns} and {first.rows}x{first.columns}"
            )
        if max(abs(a - b) for a, b in zip(frame.pixel_spacing, first.pixel_spacing)) > 1e-4:
            raise GeometryError(
                f"mixed pixel spacings: {list(frame.pixel_spacing)} and {list(first.pixel_spacing)}"
            )
    normal = np.cross(first.row_direction, first.column_direction)
    positions = np.stack([f.position for f in frames])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    if np.any(steps < 1e-3):
        raise GeometryError(
            f"{int(np.sum(steps < 1e-3)) + 1} slices share a position (several echoes, phases "
            "or repeats in one series?)"
        )
    median = float(np.median(steps))
    tolerance = max(tolerance_mm, 0.01 * median)
    gaps = np.flatnonzero(steps > max_gap_ratio * median)
    if gaps.size:
        where = ", ".join(f"{along[order][i]:.2f}..{along[order][i + 1]:.2f} mm" for i in gaps[:5])
        missing = round(float(np.sum(steps[gaps]) / median - gaps.size))
        raise GeometryError(
            f"missing slice(s): about {missing} slice(s) absent between positions {where} "
            f"along the normal (step {median:.3f} mm)"
        )
    if float(np.max(np.abs(steps - median))) > tolerance:
        raise GeometryError(
            f"irregular slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm "
            f"(tolerance {tolerance:.3f} mm)"
        )
    offsets = positions[order] - positions[order][0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    shear = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if shear > tolerance:
        raise GeometryError(
            f"sheared stack: slices drift up to {shear:.2f} mm in-plane from a stack "
            "perpendicular to the slices (gantry tilt?); refusing rather than resampling "
            "it silently"
        )
    return StackGeometry(slice_step_mm=median, order=tuple(int(i) for i in order), normal=normal)


def stack_affine_ras(frames: Sequence[Frame], stack: StackGeometry) -> npt.NDArray[np.float64]:
    """The voxel-to-RAS affine of a checked stack whose array axes are (column, row, slice)
    with slices in ``stack.order`` (the layout :mod:`.volumes` builds)."""
    first = frames[stack.order[0]]
    row_spacing, column_spacing = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = first.row_direction * column_spacing  # along a row: next column
    lps[:3, 1] = first.column_direction * row_spacing  # down a column: next row
    lps[:3, 2] = stack.normal * stack.slice_step_mm
    lps[:3, 3] = first.position
    return LPS_TO_RAS @ lps


def series_voxel_size(series: IndexedSeries) -> tuple[float, float, float] | None:
    """(column, row, slice) spacing in mm from headers (slice step from positions when there
    are several slices, else SpacingBetweenSlices or SliceThickness); None if unreadable."""
    try:
        frames = series_frames(series)
    except GeometryError:
        return None
    first = frames[0]
    step: float | None = None
    if len(frames) > 1:
        normal = np.cross(first.row_direction, first.column_direction)
        along = np.sort(np.stack([f.position for f in frames]) @ normal)
        steps = np.diff(along)
        steps = steps[steps > 1e-3]
        step = float(np.median(steps)) if steps.size else None
    if step is None:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = header_attribute(series.header, keyword)
            if value is not None:
                step = float(value)
                break
    if step is None:
        return None
    return (first.pixel_spacing[1], first.pixel_spacing[0], step)
