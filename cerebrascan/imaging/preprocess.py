"""nnU-Net-style preprocessing maths: crop to the head, z-score inside it, resample.

Every step keeps what is needed to invert it (see :mod:`cerebrascan.imaging.postprocess`), so
labels go back onto the input image's exact grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cerebrascan.imaging.array_pool import pooled_empty
from cerebrascan.imaging.channel_threads import map_channels

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


def nonzero_mask(images: FloatArray) -> npt.NDArray[np.bool_]:
    """Voxels that are non-zero in any channel of ``(channels, x, y, z)``.

    ``np.any(images != 0, axis=0)`` channel by channel into one mask: no ``images``-sized
    boolean temporary.
    """
    mask: npt.NDArray[np.bool_] = np.empty(images.shape[1:], dtype=np.bool_)

    def mask_slab(part: slice) -> None:
        out = mask[part]
        np.not_equal(images[0, part], 0, out=out)
        for channel in images[1:]:
            out |= np.not_equal(channel[part], 0)

    half = images.shape[1] // 2  # two slabs side by side on the shared threads
    for _ in map_channels(mask_slab, (slice(0, half), slice(half, None))):
        pass
    return mask


def nonzero_bounding_box(images: FloatArray, mask: npt.NDArray[np.bool_] | None = None) -> Box:
    """Smallest box holding every voxel that is non-zero in any channel.

    Args:
        images: (channels, x, y, z) array.
        mask: its :func:`nonzero_mask` when the caller already has it.

    Raises:
        ValueError: every voxel is zero.
    """
    nonzero = nonzero_mask(images) if mask is None else mask
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
        mask = nonzero_mask(images)
    mask = np.ascontiguousarray(mask)
    outside = ~mask
    out = np.empty(images.shape, dtype=np.float32)
    data = np.empty(images.shape[1:], dtype=np.float32)
    for channel in range(images.shape[0]):
        _zscore_channel(images[channel], mask, outside, data, out[channel])
    return out


def _zscore_channel(
    channel: FloatArray,
    mask: npt.NDArray[np.bool_],
    outside: npt.NDArray[np.bool_],
    scratch: FloatArray,
    out: FloatArray,
) -> None:
    """One channel of :func:`zscore_inside_mask` into ``out`` (``scratch``: a buffer of its
    shape, so the caller reuses one for every channel)."""
    # A crop is a strided view: one contiguous copy makes every pass below stream memory.
    np.copyto(scratch, channel)
    values = scratch[mask]
    mean = float(values.mean())
    std = float(values.std(mean=np.float32(mean)))
    del values
    # Whole-channel arithmetic then one select: faster than a masked scatter, same values.
    np.subtract(scratch, mean, out=out)
    np.divide(out, max(std, 1e-8), out=out)
    np.copyto(out, 0.0, where=outside)


SPACING_TOLERANCE = 1e-3
"""Relative difference under which an input spacing counts as the network's: such a study is
not resampled at all (header rounding, e.g. 1.4999 mm, would otherwise cost a full resampling
and move every voxel by a fraction of a millimetre for nothing)."""


def shape_for_spacing(
    shape: tuple[int, ...], spacing: tuple[float, ...], target_spacing: tuple[float, ...]
) -> tuple[int, int, int]:
    """Grid shape that covers the same extent at ``target_spacing`` (nnU-Net's rounding).

    Axes whose spacing is within :data:`SPACING_TOLERANCE` of the target keep their size.
    """
    if all(abs(sp - tsp) <= SPACING_TOLERANCE * tsp for sp, tsp in zip(spacing, target_spacing)):
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    new = [max(1, round(s * sp / tsp)) for s, sp, tsp in zip(shape, spacing, target_spacing)]
    return (new[0], new[1], new[2])


@lru_cache(maxsize=128)
def _resampling_matrix(n_in: int, n_out: int, order: int) -> FloatArray:
    """The ``(n_out, n_in)`` matrix of 1-D ``ndimage.zoom`` (edge-aligned, ``nearest`` edges).

    Column ``i`` is the zoom of the ``i``-th unit vector, so the matrix is exactly that zoom,
    spline prefilter included. Entries under 1e-9 (the prefilter's exponentially decaying
    tail) are set to zero: as float32 they would be denormals, which make the products ~15x
    slower, and they change no result by more than ~1e-8 of the signal.
    """
    matrix = np.empty((n_out, n_in), dtype=np.float64)
    unit = np.zeros(n_in, dtype=np.float64)
    for i in range(n_in):
        unit[i] = 1.0
        matrix[:, i] = ndimage.zoom(unit, n_out / n_in, order=order, mode="nearest", grid_mode=True)
        unit[i] = 0.0
    matrix[np.abs(matrix) < 1e-9] = 0.0
    result = matrix.astype(np.float32)
    result.setflags(write=False)  # shared by every caller through the cache
    return result


@lru_cache(maxsize=128)
def _linear_taps(n_in: int, n_out: int) -> tuple[npt.NDArray[np.intp], FloatArray, FloatArray]:
    """The two taps of each row of the order-1 :func:`_resampling_matrix`: ``(first, w_first,
    w_next)``; output ``j`` is ``w_first[j] * in[first[j]] + w_next[j] * in[first[j] + 1]``.

    Read off the matrix itself, so the weights are exactly the ones the matrix product uses.
    At an edge (``mode="nearest"``) a row has one tap: ``w_next`` is 0 and ``first + 1`` is
    clipped into the axis.

    Raises:
        ValueError: a row has taps that are not one or two neighbours (cannot happen for
            linear interpolation; guards the shortcut).
    """
    matrix = _resampling_matrix(n_in, n_out, 1)
    first = np.empty(n_out, dtype=np.intp)
    w_first = np.zeros(n_out, dtype=np.float32)
    w_next = np.zeros(n_out, dtype=np.float32)
    for j, row in enumerate(matrix):
        taps = np.flatnonzero(row)
        if taps.size == 0 or taps.size > 2 or taps[-1] - taps[0] > 1:
            raise ValueError(f"linear resampling {n_in} -> {n_out}: row {j} has taps {taps}")
        first[j] = taps[0]
        w_first[j] = row[taps[0]]
        if taps.size == 2:
            w_next[j] = row[taps[1]]
    for array in (first, w_first, w_next):
        array.setflags(write=False)  # shared by every caller through the cache
    return first, w_first, w_next


def _resample_linear(images: FloatArray, shape: tuple[int, int, int]) -> FloatArray:
    """Order-1 :func:`resample_channels` as two taps per output voxel and axis.

    The order-1 matrix has two non-zeros per row, so the dense product wastes ~40x its work;
    two scaled slices added are memory-speed, and single-threaded, so a busy CPU slows them
    in proportion instead of stalling BLAS threads that wait for each other.
    """
    channels, x, y, z = images.shape
    out = np.ascontiguousarray(images, dtype=np.float32)
    if z != shape[2]:  # innermost axis: two gathers, done first, on the smallest array
        first, w_first, w_next = _linear_taps(z, shape[2])
        rows = out.reshape(-1, z)
        gathered = np.take(rows, first, axis=1)
        gathered *= w_first
        following = np.take(rows, np.minimum(first + 1, z - 1), axis=1)
        following *= w_next
        gathered += following
        del following
        z = shape[2]
        out = gathered.reshape(channels, x, y, z)
    if y != shape[1]:
        out = _two_tap_planes(out.reshape(channels * x, y, z), shape[1])
        y = shape[1]
        out = out.reshape(channels, x, y, z)
    if x != shape[0]:
        out = _two_tap_planes(out.reshape(channels, x, y * z), shape[0])
    return out.reshape(channels, *shape)


def _two_tap_planes(source: FloatArray, n_out: int) -> FloatArray:
    """Linear resampling of ``(outer, n_in, inner)`` along its middle axis to ``n_out``.

    Each output plane is two input planes scaled and added, plane by plane: the operands stay
    in cache and no whole-array temporary is made.
    """
    outer, n_in, inner = source.shape
    first, w_first, w_next = _linear_taps(n_in, n_out)
    result = np.empty((outer, n_out, inner), dtype=np.float32)
    scratch = np.empty((outer, inner), dtype=np.float32)
    for j in range(n_out):
        plane = result[:, j]
        np.multiply(source[:, first[j]], w_first[j], out=plane)
        if w_next[j] != 0:
            np.multiply(source[:, first[j] + 1], w_next[j], out=scratch)
            np.add(plane, scratch, out=plane)
    return result


def resample_channels(images: FloatArray, shape: tuple[int, int, int], order: int) -> FloatArray:
    """Resample each channel of ``(channels, x, y, z)`` to ``shape``, aligning voxel edges.

    The same maths as ``scipy.ndimage.zoom(order=order, mode="nearest", grid_mode=True)`` per
    channel (B-spline interpolation is a tensor product, prefilter included), done as one
    float32 matrix product per axis: BLAS-threaded and ~10-15x faster than ``zoom``, which
    interpolates ``(order + 1) ** 3`` taps per voxel in float64. Order 1 (probabilities, the
    head mask) takes its two taps per axis directly (:func:`_resample_linear`). Results agree
    with ``zoom`` to ~1e-7 of the signal (tests/test_preprocess.py).

    Args:
        images: channel-first array.
        shape: wanted spatial shape.
        order: spline order (3 for images, 1 for probabilities, as nnU-Net does).
    """
    channels, *spatial = images.shape
    if tuple(spatial) == tuple(shape):
        return images.astype(np.float32, copy=False)
    if order == 1:
        return _resample_linear(images, shape)
    x, y, z = spatial
    out = np.ascontiguousarray(images, dtype=np.float32)
    # Three large BLAS products, each over the array's last axis (the middle axis is moved
    # there and back: two memory-speed copies beat thousands of small products).
    if z != shape[2]:
        out = out.reshape(-1, z) @ _resampling_matrix(z, shape[2], order).T
    if y != shape[1]:
        moved = np.ascontiguousarray(out.reshape(channels * x, y, shape[2]).transpose(0, 2, 1))
        moved = moved.reshape(-1, y) @ _resampling_matrix(y, shape[1], order).T
        out = np.ascontiguousarray(
            moved.reshape(channels * x, shape[2], shape[1]).transpose(0, 2, 1)
        )
    if x != shape[0]:
        matrix = _resampling_matrix(x, shape[0], order)
        stack = out.reshape(channels, x, -1)
        out = np.empty((channels, shape[0], stack.shape[2]), dtype=np.float32)
        for channel in range(channels):
            np.matmul(matrix, stack[channel], out=out[channel])
    return out.reshape(channels, *shape)


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
    nonzero = nonzero_mask(images)
    box = nonzero_bounding_box(images, nonzero)
    cropped = images[(slice(None), *box)]
    head = np.ascontiguousarray(nonzero[box])
    outside = ~head
    cropped_shape = (int(cropped.shape[1]), int(cropped.shape[2]), int(cropped.shape[3]))
    target_shape = shape_for_spacing(cropped_shape, spacing, target_spacing)
    # The maths is per channel. Channels are z-scored side by side on the shared threads
    # (channel_threads), and the head mask is resampled to the network grid beside them; then
    # the channels are resampled one by one: the resampling's BLAS products use every core
    # already, and two channels' products at once made preprocessing ~20 % slower.
    channels = cropped.shape[0]
    normalised = pooled_empty((channels, *cropped_shape), np.float32)

    def normalise(channel: int) -> None:
        scratch = np.empty(cropped_shape, dtype=np.float32)
        _zscore_channel(cropped[channel], head, outside, scratch, normalised[channel])

    def head_on_network_grid(mask: npt.NDArray[np.bool_]) -> FloatArray:
        on_grid: FloatArray = resample_channels(
            mask[None].astype(np.float32), target_shape, order=1
        )[0]
        return on_grid

    head_resampling = map_channels(head_on_network_grid, [head])  # submitted now
    for _ in map_channels(normalise, range(channels)):
        pass
    (head_resampled,) = head_resampling
    resampled = np.empty((channels, *target_shape), dtype=np.float32)
    for channel, image in enumerate(normalised):
        resampled[channel] = resample_channels(image[None], target_shape, order=3)[0]
    # Spline overshoot must not invent signal outside the head.
    resampled[:, head_resampled < 0.5] = 0.0
    return PreprocessedCase(
        data=resampled,
        crop_box=box,
        input_shape=(int(images.shape[1]), int(images.shape[2]), int(images.shape[3])),
        cropped_shape=cropped_shape,
    )
