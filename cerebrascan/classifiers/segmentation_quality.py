"""Is a predicted segmentation trustworthy enough to compute a tumour's features on? (maths)

Used by the classifier analyzers (a failed segmentation makes every task "not assessable") and
by the classifier pipeline's features stage (which records the statistic of every case).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

UNCERTAIN_BAND: tuple[float, float] = (0.2, 0.8)
"""Tumour probabilities counted as uncertain by :func:`segmentation_uncertainty`."""


def segmentation_uncertainty(
    probabilities: npt.NDArray[np.floating[Any]] | None, segmentation: npt.NDArray[Any]
) -> float | None:
    """Voxels of uncertain tumour probability per voxel of the segmented tumour.

    The tumour probability is ``1 - P(background)``; a voxel is uncertain when it lies in
    :data:`UNCERTAIN_BAND`. A confident segmentation has a thin uncertain rim (0.2-0.7 of its
    volume on the phantoms); one that failed on a tumour unlike its training data has a wide
    uncertain cloud around a small core (above 1). See docs/classifiers.md.

    Args:
        probabilities: ``(classes, x, y, z)`` label probabilities, channel 0 background, on the
            segmentation's grid; None when the model gave none (then None is returned).
        segmentation: labels, 0 = background.

    Returns:
        The ratio, ``inf`` for an empty segmentation, None without probabilities.

    Raises:
        ValueError: the probabilities' grid differs from the segmentation's.
    """
    if probabilities is None:
        return None
    if probabilities.shape[1:] != segmentation.shape:
        raise ValueError(
            f"probabilities grid {probabilities.shape[1:]} != segmentation {segmentation.shape}"
        )
    tumour_voxels = int(np.count_nonzero(segmentation))
    low, high = UNCERTAIN_BAND
    # background probability in the band (1 - high, 1 - low) <=> tumour probability in the band
    background = probabilities[0]
    uncertain = int(np.count_nonzero((background > 1.0 - high) & (background < 1.0 - low)))
    return math.inf if tumour_voxels == 0 else uncertain / tumour_voxels
