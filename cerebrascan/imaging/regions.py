"""BraTS 2023 label and region arithmetic shared by metrics and findings."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from schemas.model_spec import BRATS_LABELS, BRATS_REGIONS

STRUCTURES: tuple[str, ...] = ("NETC", "SNFH", "ET", "TC", "WT")
"""Labels and regions reported everywhere, in this order."""


def structure_mask(labels: npt.NDArray[np.integer], name: str) -> npt.NDArray[np.bool_]:
    """Binary mask of a BraTS label (NETC, SNFH, ET) or region (WT, TC, ET).

    Raises:
        KeyError: ``name`` is neither a label nor a region.
    """
    if name in BRATS_REGIONS:
        return np.isin(labels, BRATS_REGIONS[name])
    if name in BRATS_LABELS:
        mask: npt.NDArray[np.bool_] = labels == BRATS_LABELS[name]
        return mask
    raise KeyError(f"unknown BraTS label or region {name!r}; known: {STRUCTURES}")


COUNT_SLAB_VOXELS = 1 << 18
"""Voxels counted per step by :func:`label_counts`: ``np.bincount`` widens its input to 64-bit
integers, and a whole-grid copy (71 MB for 240x240x155) costs more in fresh pages than the
counting itself."""


def label_counts(labels: npt.NDArray[np.integer], minlength: int = 4) -> npt.NDArray[np.intp]:
    """Voxels per label value (``np.bincount`` of the whole array), counted slab by slab.

    Raises:
        ValueError: ``labels`` holds a negative value (as ``np.bincount``).
    """
    flat = labels.reshape(-1)
    counts = np.zeros(minlength, dtype=np.intp)
    for start in range(0, flat.size, COUNT_SLAB_VOXELS):
        slab = np.bincount(flat[start : start + COUNT_SLAB_VOXELS], minlength=minlength)
        if slab.size > counts.size:
            slab[: counts.size] += counts
            counts = slab
        else:
            counts[: slab.size] += slab
    return counts


def volumes_ml(
    labels: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float]
) -> dict[str, float]:
    """Volume in mL of each label and region (voxel count x voxel volume)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = label_counts(labels)
    per_label = {name: int(counts[value]) for name, value in BRATS_LABELS.items()}
    result = {name: per_label[name] * voxel_ml for name in BRATS_LABELS}
    result["TC"] = (per_label["NETC"] + per_label["ET"]) * voxel_ml
    result["WT"] = (per_label["NETC"] + per_label["SNFH"] + per_label["ET"]) * voxel_ml
    return {name: result[name] for name in STRUCTURES}
