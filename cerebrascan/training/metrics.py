"""Segmentation metrics with BraTS conventions: Dice and HD95 per region (WT, TC, ET).

Conventions (as the BraTS evaluation): both masks empty gives Dice 1 and HD95 0; exactly one
empty gives Dice 0 and HD95 ``EMPTY_HD95_MM`` (373 mm, the penalty of the official
``brats-evaluation`` package: the diagonal of the SRI24 cube).

HD95 is defined as the official package's (panoptica 2.1, ``metrics/hausdorff_distance.py``):
surfaces are mask voxels removed by one erosion with the face-connected (6-neighbour) cross,
voxels outside the image counting as background; the distances from each surface voxel to the
other surface (mm, honouring voxel spacing) are pooled over both directions and their 95th
percentile taken once. (Earlier versions took the larger of the two directed percentiles on
26-neighbour surfaces, up to 0.6 mm from the official figure: see docs/training.md.)
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
    # face connectivity, as panoptica's generate_binary_structure(ndim, connectivity=1)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return np.asarray(mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0))


def _padded_box(mask: BoolArray) -> tuple[slice, ...]:
    """The bounding box of a non-empty ``mask``, one voxel wider on each side within the grid."""
    (box,) = ndimage.find_objects(mask.astype(np.uint8))
    return tuple(
        slice(max(axis.start - 1, 0), min(axis.stop + 1, size))
        for axis, size in zip(box, mask.shape, strict=True)
    )


def hd95(
    prediction: BoolArray, reference: BoolArray, spacing_mm: tuple[float, float, float]
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (BraTS conventions for empties).

    Both directed surface-distance sets are pooled before the percentile, as the official
    ``brats-evaluation`` package (panoptica) computes it.
    """
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_prediction and not has_reference:
        return 0.0
    if has_prediction != has_reference:
        return EMPTY_HD95_MM
    # both surfaces lie in the masks' joint bounding box (padded by a voxel so that erosion sees
    # the same neighbours): distances computed there equal the whole grid's, at a fraction of
    # the cost on a 240 x 240 x 155 study
    box = _padded_box(prediction | reference)
    prediction, reference = prediction[box], reference[box]
    surface_p, surface_r = _surface(prediction), _surface(reference)
    to_reference = ndimage.distance_transform_edt(~surface_r, sampling=spacing_mm)
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing_mm)
    pooled = np.concatenate((to_reference[surface_p], to_prediction[surface_r]))
    return float(np.percentile(pooled, 95))


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


def paired_bootstrap(
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean paired difference ``second - first`` and its percentile bootstrap interval.

    Cases are resampled with replacement (``resamples`` times, generator seeded by ``seed``);
    the interval holds the central ``confidence`` of the resampled means.

    Raises:
        ValueError: the arrays differ in length or are empty, or ``confidence`` is not in (0, 1).
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"paired samples must be two equal, non-empty 1-D arrays: {a.shape}, {b.shape}"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    differences = b - a
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, differences.size, size=(resamples, differences.size))
    means = differences[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return {
        "mean_difference": float(differences.mean()),
        "low": float(np.quantile(means, tail)),
        "high": float(np.quantile(means, 1.0 - tail)),
    }
