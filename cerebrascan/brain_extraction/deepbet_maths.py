"""deepbet's pre- and postprocessing in numpy (maths only): no torch at run time.

Reimplemented from ``deepbet/bet.py`` and ``deepbet/utils.py`` of deepbet 1.0.2 (MIT,
Fisch et al. 2024, https://github.com/wwu-mmll/deepbet):

1. the volume, in the closest RAS orientation (``nib.as_closest_canonical``: flips and axis
   swaps only, no resampling), is resized to 128^3 by ``nearest-exact`` interpolation;
2. intensities are clipped to the 0.5 / 99.5 % quantiles of that copy, standardised and mapped
   to ``0.226 * z + 0.449`` (:func:`normalise`);
3. the first network's brain mask (probability > 0.5, largest 26-connected component) gives a
   box, widened by 10 % of its size on each side (:func:`brain_box`);
4. the box is resized to 256^3 (``input_size``), normalised with the same quantiles, and the
   second network's probabilities are resized back onto the box;
5. the thresholded mask keeps its largest component and its enclosed holes are filled.

The ONNX files output logits (the softmax is stripped at export, ``export.py``): probability
``p > t`` of the brain channel is ``l1 - l0 > log(t / (1 - t))``, so no softmax over 16 M voxels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

COARSE_SIZE = 128
"""Edge of the cube the whole volume is resized to for the first (box) network."""
BOX_MARGIN = 0.1
"""Fraction of the box size added on each side (deepbet's ``bbox_margin``)."""
_BOX_PLANE_FRACTION = 0.02
"""A plane belongs to the box when more than this fraction of it is brain (deepbet)."""
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
Box = tuple[slice, slice, slice]


class NoBrainError(ValueError):
    """The image cannot hold a brain: no intensity range, or the networks found none."""


def nearest_exact_indices(source: int, target: int) -> npt.NDArray[np.intp]:
    """Source index of each of ``target`` samples: torch's ``nearest-exact`` (pixel centres).

    ``floor((i + 0.5) * source / target)``, computed in float32 as torch does, capped at
    ``source - 1``.
    """
    if source < 1 or target < 1:
        raise ValueError(f"sizes must be >= 1, got source {source} and target {target}")
    scale = np.float32(source / target)
    positions = (np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale
    index: npt.NDArray[np.intp] = np.minimum(np.floor(positions).astype(np.intp), source - 1)
    return index


def resize_nearest(volume: npt.NDArray[Any], shape: tuple[int, int, int]) -> npt.NDArray[Any]:
    """``volume`` resized to ``shape`` by nearest-exact sampling (a copy)."""
    if volume.ndim != 3 or len(shape) != 3:
        raise ValueError(f"need a 3D volume and a 3D shape, got {volume.shape} and {shape}")
    index = [nearest_exact_indices(n, m) for n, m in zip(volume.shape, shape, strict=True)]
    return volume[np.ix_(*index)]


def quantile_window(coarse: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The 0.5 % and 99.5 % quantiles (linear interpolation) of the coarse copy."""
    low, high = np.quantile(coarse, [0.005, 0.995])
    return float(low), float(high)


def normalise(volume: npt.NDArray[np.float32], low: float, high: float) -> npt.NDArray[np.float32]:
    """deepbet's input scaling: clip to ``[low, high]`` on 0..1, standardise, ``0.226 z + 0.449``.

    Raises:
        NoBrainError: the window is empty or the clipped volume is constant (no image).
    """
    if not high > low:
        raise NoBrainError(
            f"the image has no intensity range (0.5 % quantile {low}, 99.5 % quantile {high})"
        )
    scaled = np.clip((volume - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
    # torch's std is the unbiased one; accumulate in float64 for a stable mean over 16 M voxels
    mean = float(scaled.mean(dtype=np.float64))
    std = float(scaled.std(dtype=np.float64, ddof=1))
    if not std > 0:
        raise NoBrainError("the image is constant inside its intensity window; nothing to extract")
    standard = (scaled - np.float32(mean)) / np.float32(std)
    result: npt.NDArray[np.float32] = (np.float32(0.226) * standard + np.float32(0.449)).astype(
        np.float32, copy=False
    )
    return result


def as_network_input(volume: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``(1, 1, x, y, z)`` contiguous float32 batch of one volume."""
    return np.ascontiguousarray(volume[None, None], dtype=np.float32)


def logit_threshold(probability: float) -> float:
    """Logit difference equivalent to a brain probability threshold (two-class softmax)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {probability}")
    return math.log(probability / (1.0 - probability))


def brain_logit_margin(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Brain minus background logit of a ``(1, 2, x, y, z)`` network output."""
    if logits.ndim != 5 or logits.shape[:2] != (1, 2):
        raise ValueError(f"expected logits of shape (1, 2, x, y, z), got {logits.shape}")
    margin: npt.NDArray[np.float32] = logits[0, 1] - logits[0, 0]
    return margin


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 26-connected component of ``mask`` (cc3d's default connectivity).

    Raises:
        NoBrainError: ``mask`` is empty (no brain found).
    """
    labels, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if count == 0:
        raise NoBrainError("no brain found: the brain-extraction network marked no voxel")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest: npt.NDArray[np.bool_] = labels == int(sizes.argmax())
    return largest


def fill_holes(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``mask`` with every background region not 6-connected to the border filled (fill_voids)."""
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask.copy()
    faces = np.concatenate(
        [
            background[[0, -1], :, :].ravel(),
            background[:, [0, -1], :].ravel(),
            background[:, :, [0, -1]].ravel(),
        ]
    )
    outside = np.zeros(count + 1, dtype=bool)
    outside[faces] = True
    outside[0] = True  # label 0 is the mask itself
    filled: npt.NDArray[np.bool_] = mask | ~outside[background]
    return filled


def brain_box(
    coarse_mask: npt.NDArray[np.bool_], shape: tuple[int, int, int], margin: float = BOX_MARGIN
) -> Box:
    """Box (slices of the full grid) around the coarse brain mask, widened by ``margin``.

    A plane along an axis is inside when more than 2 % of it is brain; the box's centre and size
    are scaled from the coarse to the full grid, its size times ``1 + 2 * margin``, rounded
    (half to even, as torch), and clipped to the grid (deepbet's ``get_bbox_with_margin``).

    Raises:
        NoBrainError: no plane holds enough brain (no brain found).
    """
    ranges = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        inside = np.flatnonzero(coarse_mask.mean(axis=others) > _BOX_PLANE_FRACTION)
        if inside.size == 0:
            raise NoBrainError("no brain found: too little brain to place the brain box")
        ranges.append(inside)
    box = []
    for axis, inside in enumerate(ranges):
        scale = np.float32(shape[axis] / coarse_mask.shape[axis])
        centre = np.float32((inside.max() + 1 + inside.min()) / 2) * scale
        widen = np.float32(1) + np.float32(2) * np.float32(margin)
        size = np.float32(inside.max() + 1 - inside.min()) * scale * widen
        centre, size = np.round(centre), np.round(size)
        low, high = int(centre - size / 2), int(centre + size / 2)
        box.append(slice(max(0, low), min(shape[axis], high)))
    return (box[0], box[1], box[2])
