"""Segmentation metrics with BraTS conventions: Dice and HD95 per region (WT, TC, ET).

Conventions (as the BraTS evaluation): both masks empty gives Dice 1 and HD95 0; exactly one
empty gives Dice 0 and HD95 ``EMPTY_HD95_MM`` (373 mm, the penalty of the official
``brats-evaluation`` package: the diagonal of the SRI24 cube). HD95 is the
larger of the two directed 95th-percentile surface distances (mm, honouring voxel spacing),
surfaces being mask voxels with a background neighbour (full 3x3x3 connectivity).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cerebrascan.imaging.regions import structure_mask

EMPTY_HD95_MM = 373.0
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")

BoolArray = npt.NDArray[np.bool_]


def dice(prediction: BoolArray, reference: BoolArray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def _surface(mask: BoolArray) -> BoolArray:
    structure = np.ones((3, 3, 3), dtype=bool)
    return np.asarray(mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0))


def hd95(
    prediction: BoolArray, reference: BoolArray, spacing_mm: tuple[float, float, float]
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (BraTS conventions for empties)."""
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_prediction and not has_reference:
        return 0.0
    if has_prediction != has_reference:
        return EMPTY_HD95_MM
    surface_p, surface_r = _surface(prediction), _surface(reference)
    to_reference = ndimage.distance_transform_edt(~surface_r, sampling=spacing_mm)
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing_mm)
    forward = np.percentile(to_reference[surface_p], 95)
    backward = np.percentile(to_prediction[surface_r], 95)
    return float(max(forward, backward))


def region_metrics(
    prediction_labels: npt.NDArray[np.integer],
    reference_labels: npt.NDArray[np.integer],
    spacing_mm: tuple[float, float, float],
) -> dict[str, dict[str, float]]:
    """Dice and HD95 for WT, TC and ET between two BraTS label maps of one shape.

    Raises:
        ValueError: the label maps differ in shape.
    """
    if prediction_labels.shape != reference_labels.shape:
        raise ValueError(
            f"prediction shape {prediction_labels.shape} != reference {reference_labels.shape}"
        )
    result = {}
    for region in REGIONS:
        p = structure_mask(prediction_labels, region)
        r = structure_mask(reference_labels, region)
        result[region] = {"dice": dice(p, r), "hd95_mm": hd95(p, r, spacing_mm)}
    return result
