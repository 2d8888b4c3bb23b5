"""The in-memory form of one multi-modal MRI study, where every transport ends.

Each input adapter (:mod:`.nifti` uploads, :mod:`.case_folder`, :mod:`.oip` tensors) decodes its
bytes, checks them with the functions here and hands a :class:`Study` to
:meth:`cerebrascan.pipeline.AnalysisPipeline.run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cerebrascan.errors import InputError
from cerebrascan.imaging.geometry import spacing_from_affine
from schemas.dicom import DicomAnalysis


@dataclass(frozen=True)
class Volume:
    """One decoded 3D image: voxels (float32) and its voxel-to-RAS affine."""

    data: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        return spacing_from_affine(self.affine)


DICOM_UNTRUSTED_TEXT_TAGS = (
    "StudyDescription",
    "SeriesDescription",
    "RequestedProcedureDescription",
    "AdditionalPatientHistory",
    "ReasonForTheRequestedProcedure",
)
"""Free-text DICOM attributes a study may carry: untrusted data for the report writer only.
The DICOM input (issue 16) fills :attr:`Study.supplied_text` with
:func:`untrusted_text_from_dicom`."""
MAX_UNTRUSTED_TEXT_CHARS = 1000


def untrusted_text_from_dicom(attributes: Mapping[str, object]) -> dict[str, str]:
    """The free-text attributes of :data:`DICOM_UNTRUSTED_TEXT_TAGS` in ``attributes`` (keyword
    -> value, e.g. a pydicom dataset's), as ``{"dicom.<keyword>": text}``; empty ones left out,
    each cut to :data:`MAX_UNTRUSTED_TEXT_CHARS`."""
    found = {}
    for keyword in DICOM_UNTRUSTED_TEXT_TAGS:
        value = attributes.get(keyword)
        text = "" if value is None else str(value).strip()
        if text:
            found[f"dicom.{keyword}"] = text[:MAX_UNTRUSTED_TEXT_CHARS]
    return found


@dataclass(frozen=True)
class SegmentationSpace:
    """Another grid the network segments the study on (the SRI24 atlas, as BraTS does); the
    results come back onto the study's grid (:func:`cerebrascan.segmentation.segment_study`).
    """

    images: npt.NDArray[np.float32]
    """(channels, x, y, z): the study's modalities resampled onto this grid."""
    affine: npt.NDArray[np.float64]
    """This grid's voxel-to-RAS affine."""
    study_to_space: npt.NDArray[np.float64]
    """4x4 RAS matrix: a point of the study's grid -> the same anatomy in this space."""


@dataclass(frozen=True)
class Study:
    """Four co-registered modalities stacked channel-first in ``modalities`` order."""

    images: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    modalities: tuple[str, ...]
    supplied_text: Mapping[str, str] = field(default_factory=dict)
    """Free text that arrived with the images (``dicom.StudyDescription``, ...): untrusted data,
    handed to an LLM report writer as quoted data only; never logged."""
    dicom_source: tuple[dict[str, Any], ...] | None = None
    """The reference series' headers (pydicom ``to_json_dict`` per instance, no pixel data) of
    a DICOM-origin study, kept in the study folder for the DICOM outputs; None otherwise."""
    dicom_report: DicomAnalysis | None = None
    """The ``dicom`` section of the answer (series chosen, grids, resampling, brain mask)."""
    segmentation_space: SegmentationSpace | None = None
    """Where the network segments it when not on its own grid (``dicom.normalise_to_atlas``);
    labels always come back on this study's grid."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape shared by all modalities."""
        x, y, z = self.images.shape[1:]
        return (int(x), int(y), int(z))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        return spacing_from_affine(self.affine)


def check_voxel_values(volume: npt.NDArray[np.float32], *, field: str) -> None:
    """Refuse a volume that cannot be analysed: NaN or infinite voxels, or all zero.

    Raises:
        InputError: 422, naming ``field`` and the count of bad voxels.
    """
    bad = int(np.count_nonzero(~np.isfinite(volume)))
    if bad:
        raise InputError(f"{bad} voxels are NaN or infinite", field=field)
    if not np.any(volume):
        raise InputError("every voxel is zero; the image is empty", field=field)


def check_shape(shape: tuple[int, ...], *, field: str, max_voxels: int) -> None:
    """Refuse a 3-D grid too large to allocate or too small to be a brain volume.

    Raises:
        InputError: 413 for more than ``max_voxels`` voxels; 422 for an axis under 8 voxels.
    """
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise InputError(
            f"grid {list(shape)} = {voxels} voxels, over the limit of {max_voxels}",
            status_code=413,
            field=field,
        )
    if min(shape) < 8:
        raise InputError(
            f"grid {list(shape)} has an axis under 8 voxels; a 3-D brain volume is required",
            field=field,
        )


def check_affine(affine: npt.NDArray[np.float64], *, field: str) -> None:
    """Refuse a voxel-to-RAS affine that is not finite and invertible.

    Raises:
        InputError: 422, showing the affine.
    """
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(f"affine {affine.tolist()} is not finite and invertible", field=field)


def check_grid(
    shape: tuple[int, ...], affine: npt.NDArray[np.float64], *, field: str, max_voxels: int
) -> None:
    """Refuse a grid the pipeline cannot take (the rules a NIfTI header is held to).

    Raises:
        InputError: 413 for more than ``max_voxels`` voxels; 422 for an axis under 8 voxels,
            an affine that is not finite and invertible or voxel sizes outside (0, 20] mm.
    """
    check_shape(shape, field=field, max_voxels=max_voxels)
    check_affine(affine, field=field)
    spacing = spacing_from_affine(affine)
    if any(not 0 < s <= 20 for s in spacing):
        raise InputError(f"voxel sizes {list(spacing)} mm are not in (0, 20]", field=field)
