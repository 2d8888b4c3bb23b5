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


def volumes_ml(
    labels: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float]
) -> dict[str, float]:
    """Volume in mL of each label and region (voxel count x voxel volume)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=4)
    per_label = {name: int(counts[value]) for name, value in BRATS_LABELS.items()}
    result = {name: per_label[name] * voxel_ml for name in BRATS_LABELS}
    result["TC"] = (per_label["NETC"] + per_label["ET"]) * voxel_ml
    result["WT"] = (per_label["NETC"] + per_label["SNFH"] + per_label["ET"]) * voxel_ml
    return {name: result[name] for name in STRUCTURES}
