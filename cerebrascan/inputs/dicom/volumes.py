"""Decode a chosen series into a volume with honest geometry (I/O: reads the pixel data).

highdicom builds the volume (``get_volume_from_series`` for single-frame series, the
multiframe path of ``Image.get_volume`` for Enhanced MR). Before any pixel is decoded the
series passes this project's own checks (:func:`.geometry.check_stack`: missing slice,
irregular spacing, shear, mixed orientations, per-frame geometry) and its transfer syntax must
have an installed decoder; each failure is a 422 naming the series and the problem. The result
is laid out (column, row, slice) with a voxel-to-RAS affine (DICOM's LPS with x and y negated),
as dcm2niix and NIfTI readers expect.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import highdicom as hd
import highdicom.image
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from cerebrascan.errors import InputError
from cerebrascan.inputs.dicom.geometry import (
    LPS_TO_RAS,
    GeometryError,
    check_stack,
    series_frames,
    stack_affine_ras,
)
from cerebrascan.inputs.dicom.index import IndexedSeries, frame_count
from cerebrascan.inputs.study import check_shape, check_voxel_values

logger = logging.getLogger(__name__)

# highdicom asks, for every slice it wraps, whether the SOP class has pixel data by scanning
# the standard's IOD tables: a pure function of the SOP Class UID that took ~17 % of the DICOM
# path (benchmarks/README.md). Its answers are remembered (highdicom is pinned below 0.29).
_HIGHDICOM_IMAGE = vars(highdicom.image)
_IOD_HAS_PIXELS = _HIGHDICOM_IMAGE.get("does_iod_have_pixel_data")
if _IOD_HAS_PIXELS is not None and not hasattr(_IOD_HAS_PIXELS, "cache_info"):
    _HIGHDICOM_IMAGE["does_iod_have_pixel_data"] = functools.lru_cache(maxsize=64)(_IOD_HAS_PIXELS)

_DECODE_ERRORS = (
    ValueError,
    AttributeError,
    RuntimeError,
    NotImplementedError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    OSError,
)


@dataclass(frozen=True)
class SeriesVolume:
    """One series as a float32 volume on its own grid."""

    series_uid: str
    data: npt.NDArray[np.float32]
    """Voxels, axes (column, row, slice), modality/real-world rescale applied."""
    affine: npt.NDArray[np.float64]
    """Voxel-to-RAS (mm)."""
    frame_of_reference_uid: str


def series_label(series: IndexedSeries) -> str:
    """How messages name a series: its number and SeriesInstanceUID (no free text)."""
    number = series.header.get("SeriesNumber")
    return (
        f"series {number} ({series.series_uid})"
        if number not in (None, "")
        else (f"series {series.series_uid}")
    )


def check_decodable(series: IndexedSeries) -> None:
    """Refuse a series whose transfer syntax has no installed pixel decoder.

    Raises:
        InputError: 422 naming the series, the syntax and the missing packages.
    """
    for syntax in {
        str(getattr(i.header.get("file_meta"), "TransferSyntaxUID", "")) for i in (series.instances)
    }:
        if not syntax:
            continue  # no file meta: pydicom assumes implicit little endian
        uid = UID(syntax)
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise InputError(
                f"{series_label(series)}: transfer syntax {uid.name} ({syntax}) is not "
                "supported for pixel data",
                field="series",
            ) from None
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise InputError(
                f"{series_label(series)}: transfer syntax {uid.name} ({syntax}) is compressed and "
                f"no installed decoder reads it (install one of: {missing})",
                field="series",
            )


def build_volume(
    series: IndexedSeries,
    *,
    max_voxels: int,
    max_gap_ratio: float = 1.5,
    tolerance_mm: float = 0.01,
) -> SeriesVolume:
    """Check a series' geometry and decode it into a volume.

    Args:
        series: the indexed series (headers only).
        max_voxels: the most voxels a volume may have (checked before decoding).
        max_gap_ratio: see :func:`.geometry.check_stack`.
        tolerance_mm: see :func:`.geometry.check_stack`.

    Raises:
        InputError: 422 naming the series and the problem: geometry (missing slice, irregular
            spacing, shear, mixed orientations, no per-frame geometry), an undecodable or
            truncated pixel data, a colour image, empty or non-finite voxels; 413 for a volume
            over ``max_voxels``.
    """
    label = series_label(series)
    try:
        frames = series_frames(series)
        stack = check_stack(frames, max_gap_ratio=max_gap_ratio, tolerance_mm=tolerance_mm)
    except GeometryError as exc:
        raise InputError(f"{label}: {exc}", field="series") from None
    shape = (frames[0].columns, frames[0].rows, len(frames))
    check_shape(shape, field=label, max_voxels=max_voxels)
    check_decodable(series)
    multiframe = [i for i in series.instances if frame_count(i.header) > 1]
    try:
        if multiframe:
            if len(series.instances) > 1:
                raise InputError(
                    f"{label}: {len(series.instances)} instances with {len(multiframe)} "
                    "multiframe ones; one multiframe instance per series is supported",
                    field="series",
                )
            volume = hd.imread(series.instances[0].path).get_volume(dtype=np.float32)
        else:
            datasets = [pydicom.dcmread(i.path) for i in series.instances]
            volume = hd.get_volume_from_series(datasets, dtype=np.float32)
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise InputError(
            f"{label}: pixel data cannot be decoded ({type(exc).__name__}: {exc})", field="series"
        ) from None
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(
            f"{label}: pixel data has shape {list(array.shape)}; a grey-scale 3-D volume is "
            "required (colour or multi-channel images are not analysed)",
            field="series",
        )
    # highdicom lays out (slice, row, column); NIfTI readers expect (column, row, slice)
    # (contiguous: the resampling onto the reference grid reads it ~30 % faster than a view)
    data = np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32)
    affine = (LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64))[:, [2, 1, 0, 3]]
    expected = stack_affine_ras(frames, stack)
    if affine[:3, 2] @ expected[:3, 2] < 0:  # highdicom stacked the other way round
        data = np.ascontiguousarray(data[:, :, ::-1])
        affine = affine.copy()
        affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * (data.shape[2] - 1)
        affine[:3, 2] = -affine[:3, 2]
    if data.shape != shape or float(np.max(np.abs(affine - expected))) > 1e-3:
        raise InputError(
            f"{label}: highdicom's volume geometry disagrees with the slice headers "
            f"(shape {list(data.shape)} vs {list(shape)})",
            field="series",
        )
    check_voxel_values(data, field=label)
    # the number only: a SeriesInstanceUID links back to the patient in the PACS
    logger.info(
        "built series %s: grid %s, slice step %.3f mm",
        series.header.get("SeriesNumber", "?"),
        shape,
        stack.slice_step_mm,
    )
    return SeriesVolume(
        series_uid=series.series_uid,
        data=data,
        affine=expected,
        frame_of_reference_uid=str(series.header.get("FrameOfReferenceUID", "")),
    )
