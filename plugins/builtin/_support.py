"""Small helpers shared by the built-in analyzers (``nogo``, ``hotspot``, ``quality``, ...).

Not a plugin (no hook implementation): nothing here is registered with the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from cerebrascan.atlas.files import SRI24_STRUCTURES
from cerebrascan.imaging.regions import volumes_ml
from plugins.analyzer import AnalysisContext


def channel(context: AnalysisContext, modality: str) -> npt.NDArray[np.float32]:
    """One modality of ``context.images`` by name (a read-only view).

    Raises:
        ValueError: if the images are missing, not ``(n, x, y, z)`` with one channel per
            modality, or the modality is not among them.
    """
    images = context.images
    if images is None:
        raise ValueError("the analysis context has no images")
    if images.ndim != 4 or images.shape[0] != len(context.modalities):
        raise ValueError(
            f"images of shape {images.shape} do not hold one (x, y, z) channel per modality "
            f"{list(context.modalities)}"
        )
    if modality not in context.modalities:
        raise ValueError(f"modality {modality!r} not in the study's {list(context.modalities)}")
    image: npt.NDArray[np.float32] = images[context.modalities.index(modality)]
    return image


def segmentation_of(context: AnalysisContext, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    """``context.segmentation`` checked against the image grid ``shape``.

    Raises:
        ValueError: if it is missing or its shape differs.
    """
    if context.segmentation is None:
        raise ValueError("the analysis context has no segmentation")
    segmentation = np.asarray(context.segmentation)
    if segmentation.shape != tuple(shape):
        raise ValueError(
            f"segmentation shape {segmentation.shape} differs from the images' {tuple(shape)}"
        )
    return segmentation


def segmentation_volumes(context: AnalysisContext) -> dict[str, float]:
    """The segmentation's volumes (mL) per label and region: the pipeline's, when it gave them.

    Measured here only for a caller that gave none (a unit test, another host), with the same
    function as the pipeline, so the answer and every analyzer report one set of figures.

    Raises:
        ValueError: if the context has no segmentation.
    """
    if context.volumes_ml is not None:
        return dict(context.volumes_ml)
    if context.segmentation is None:
        raise ValueError("the analysis context has no segmentation")
    return volumes_ml(context.segmentation, context.spacing_mm)


def bounding_box(mask: npt.NDArray[np.bool_], margin: int = 0) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding ``mask`` grown by ``margin`` voxels (None if empty)."""
    slices = []
    for axis in range(3):
        other = tuple(k for k in range(3) if k != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(lo, hi))
    return slices[0], slices[1], slices[2]


def voxel_volume_ml(affine: npt.NDArray[Any]) -> float:
    """Volume of one voxel in mL from the affine's 3x3 part."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def known_structure_names(field: str, value: list[str], *, allow_empty: bool) -> list[str]:
    """Validate an option naming SRI24 structures; return it without duplicates, in order.

    Raises:
        ValueError: a name is not an SRI24 structure, or the list is empty when not allowed.
    """
    unknown = [name for name in value if name not in SRI24_STRUCTURES]
    if unknown or (not value and not allow_empty):
        qualifier = "" if allow_empty else "non-empty "
        raise ValueError(
            f"{field} must be a {qualifier}subset of {list(SRI24_STRUCTURES)}, got {value} "
            f"(unknown: {unknown})"
        )
    return list(dict.fromkeys(value))
