"""nnU-Net-style preprocessing maths: crop to the head, z-score inside it, resample.

Every step keeps what is needed to invert it (see :mod:`cerebrascan.imaging.postprocess`), so
labels go back onto the input image's exact grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float32]
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class PreprocessedCase:
    """A case on the network's grid, with what is needed to go back to the input grid."""

    data: FloatArray
    """(channels, d, h, w) float32 on the model spacing, zero outside the head."""
    crop_box: Box
    """Region of the input grid that was kept."""
    input_shape: tuple[int, int, int]
    cropped_shape: tuple[int, int, int]


def nonzero_bounding_box(images: FloatArray) -> Box:
    """Smallest box holding every voxel that is non-zero in any channel.

    Args:
        images: (channels, x, y, z) array.

    Raises:
        ValueError: every voxel is zero.
    """
    nonzero = np.any(images != 0, axis=0)
    if not nonzero.any():
        raise ValueError("cannot crop: every voxel of every channel is zero")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(nonzero.any(axis=other))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return (box[0], box[1], box[2])


def zscore_inside_mask(images: FloatArray, mask: npt.NDArray[np.bool_] | None = None) -> FloatArray:
    """Per-channel z-score over the voxels that are non-zero in any channel; zero elsewhere.

    This is nnU-Net's ``ZScoreNormalization`` with ``use_mask_for_norm=True``. ``mask`` is that
    non-zero mask when the caller already has it.
    """
    if mask is None:
        mask = np.any(images != 0, axis=0)
    out = np.zeros_like(images, dtype=np.float32)
    for channel in range(images.shape[0]):
        values = images[channel][mask]
        std = float(values.std())
        mean = float(values.mean())
        out[channel][mask] = (values - mean) / max(std, 1e-8)
    return out


def shape_for_spacing(
    shape: tuple[int, ...], spacing: tuple[float, ...], target_spacing: tuple[float, ...]
) -> tuple[int, int, int]:
    """Grid shape that covers the same extent at ``target_spacing`` (nnU-Net's rounding)."""
    new = [max(1, round(s * sp / tsp)) for s, sp, tsp in zip(shape, spacing, target_spacing)]
    return (new[0], new[1], new[2])


def resample_channels(images: FloatArray, shape: tuple[int, int, int], order: int) -> FloatArray:
    """Resample each channel of ``(channels, x, y, z)`` to ``shape``, aligning voxel edges.

    Args:
        images: channel-first array.
        shape: wanted spatial shape.
        order: spline order (3 for images, 1 for probabilities, as nnU-Net does).
    """
    if tuple(images.shape[1:]) == tuple(shape):
        return images.astype(np.float32, copy=False)
    factors = [n / o for n, o in zip(shape, images.shape[1:])]
    out = np.empty((images.shape[0], *shape), dtype=np.float32)
    for channel in range(images.shape[0]):
        resampled = ndimage.zoom(
            images[channel], factors, order=order, mode="nearest", grid_mode=True
        )
        if resampled.shape != tuple(shape):
            raise AssertionError(f"zoom produced {resampled.shape}, wanted {shape}")
        out[channel] = resampled
    return out


def preprocess_images(
    images: FloatArray,
    spacing: tuple[float, float, float],
    target_spacing: tuple[float, float, float],
) -> PreprocessedCase:
    """Crop to the head, z-score inside it and resample to the network's spacing.

    Args:
        images: (channels, x, y, z) float32 in the input grid.
        spacing: input voxel size (mm) per array axis.
        target_spacing: the network's voxel size (mm) per array axis.
    """
    box = nonzero_bounding_box(images)
    cropped = images[(slice(None), *box)]
    head = np.any(cropped != 0, axis=0)
    normalised = zscore_inside_mask(cropped, head)
    cropped_shape = (int(cropped.shape[1]), int(cropped.shape[2]), int(cropped.shape[3]))
    target_shape = shape_for_spacing(cropped_shape, spacing, target_spacing)
    resampled = resample_channels(normalised, target_shape, order=3)
    # Spline overshoot must not invent signal outside the head.
    head_resampled = resample_channels(head[None].astype(np.float32), target_shape, order=1)[0]
    resampled[:, head_resampled < 0.5] = 0.0
    return PreprocessedCase(
        data=resampled,
        crop_box=box,
        input_shape=(int(images.shape[1]), int(images.shape[2]), int(images.shape[3])),
        cropped_shape=cropped_shape,
    )
