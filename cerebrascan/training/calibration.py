"""Calibration tiles for post-training quantisation (maths only; no files, no network).

A tile is cut from a case preprocessed exactly as serving preprocesses it (crop to the head,
z-score inside it, resample to the network's spacing: :func:`cerebrascan.training.dataset.
to_training_case` calls the serving code), zero-padded where the case is smaller than the patch
(as the sliding window pads, centred). Every tile holds tumour and brain: it is centred on a random
tumour voxel, shifted by up to a quarter patch on each axis and clipped into the volume, so the
activations the quantiser records span tumour, brain and the zero background around the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cerebrascan.training.dataset import TrainingCase


@dataclass(frozen=True)
class CalibrationTile:
    """One tile ``(C, *patch)`` and where it was cut from its case (for the record)."""

    case_id: str
    start: tuple[int, int, int]
    """Start voxel on the preprocessed (network-grid) case; negative where it was padded."""
    tumour_fraction: float
    brain_fraction: float
    data: npt.NDArray[np.float32]


def tile_starts(
    case: TrainingCase, patch_size: tuple[int, int, int], count: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """``count`` tile starts on ``case``, each tile centred near a tumour voxel.

    Args:
        case: a preprocessed case with its labels on the network grid.
        patch_size: the network's tile shape.
        count: how many starts to draw (0 for a case without tumour).
        rng: the generator (the record's seed makes the draw repeatable).

    Raises:
        ValueError: ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not len(case.foreground):
        return []
    spatial = np.asarray(case.labels.shape)
    patch = np.asarray(patch_size)
    # An axis shorter than the patch is padded as the sliding window pads it (half the
    # shortfall before, :func:`runners.sliding_window.pad_to_patch`): a negative start.
    centred = -((patch - spatial) // 2)
    low = np.where(spatial < patch, centred, 0)
    high = np.where(spatial < patch, centred, spatial - patch)
    starts = []
    for _ in range(count):
        centre = case.foreground[rng.integers(len(case.foreground))]
        shift = rng.integers(-(patch // 4), patch // 4 + 1)
        start = np.clip(centre - patch // 2 + shift, low, high)
        starts.append((int(start[0]), int(start[1]), int(start[2])))
    return starts


def cut_tile(
    case: TrainingCase, case_id: str, start: tuple[int, int, int], patch_size: tuple[int, int, int]
) -> CalibrationTile:
    """The tile of ``case`` at ``start`` (zero where it reaches outside the volume)."""
    spatial = case.labels.shape
    data = np.zeros((case.images.shape[0], *patch_size), dtype=np.float32)
    labels = np.zeros(patch_size, dtype=np.uint8)
    src = tuple(slice(max(0, s), min(d, s + p)) for s, p, d in zip(start, patch_size, spatial))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    data[(slice(None), *dst)] = case.images[(slice(None), *src)]
    labels[dst] = case.labels[src]
    voxels = float(np.prod(patch_size))
    return CalibrationTile(
        case_id=case_id,
        start=start,
        tumour_fraction=float((labels > 0).sum()) / voxels,
        brain_fraction=float((data != 0).any(axis=0).sum()) / voxels,
        data=data,
    )
