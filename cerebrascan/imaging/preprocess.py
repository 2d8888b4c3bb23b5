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
        if images.shape[0] > 1:
            scratch = np.empty(out.shape, dtype=np.bool_)
            for channel in images[1:]:
                np.not_equal(channel[part], 0, out=scratch)
                out |= scratch

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
    box = mask_bounding_box(nonzero_mask(images) if mask is None else mask)
    if box is None:
        raise ValueError("cannot crop: every voxel of every channel is zero")
    return box


def mask_bounding_box(mask: npt.NDArray[np.bool_]) -> Box | None:
    """Smallest box holding every True voxel of a 3-D ``mask``; None when there is none.

    The mask is read once whole (its projection along the last axis); the last axis's extent
    is then read off the box's first two extents only.
    """
    columns: npt.NDArray[np.bool_] = np.any(mask, axis=2)
    rows_x = np.flatnonzero(columns.any(axis=1))
    if rows_x.size == 0:
        return None
    rows_y = np.flatnonzero(columns.any(axis=0))
    x = slice(int(rows_x[0]), int(rows_x[-1]) + 1)
    y = slice(int(rows_y[0]), int(rows_y[-1]) + 1)
    rows_z = np.flatnonzero(mask[x, y].any(axis=(0, 1)))
    return (x, y, slice(int(rows_z[0]), int(rows_z[-1]) + 1))


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
    for channel in range(images.shape[0]):
        _zscore_channel(images[channel], mask, outside, out[channel])
    return out


def _zscore_channel(
    channel: FloatArray,
    mask: npt.NDArray[np.bool_],
    outside: npt.NDArray[np.bool_],
    out: FloatArray,
) -> None:
    """One channel of :func:`zscore_inside_mask` into ``out``; ``channel`` may be a strided
    view (a crop)."""
    values = channel[mask]  # the voxels in C order, as nnU-Net's ``image[mask]``
    mean = float(values.mean())
    std = float(values.std(mean=np.float32(mean)))
    del values
    divisor = max(std, 1e-8)
    # Whole-slab arithmetic then one select (faster than a masked scatter, same values), a
    # slab of planes at a time so the three passes run in cache.
    plane_bytes = max(1, int(np.prod(channel.shape[1:], dtype=np.int64)) * 4)
    step = max(1, ZSCORE_SLAB_BYTES // plane_bytes)
    for start in range(0, channel.shape[0], step):
        part = slice(start, start + step)
        np.subtract(channel[part], mean, out=out[part])
        np.divide(out[part], divisor, out=out[part])
        np.copyto(out[part], 0.0, where=outside[part])


ZSCORE_SLAB_BYTES = 1 << 20
"""Bytes of float32 planes normalised at a time: the z-score's three passes then run in cache
instead of streaming the channel through memory once per pass."""


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
def linear_taps(n_in: int, n_out: int) -> tuple[npt.NDArray[np.intp], FloatArray, FloatArray]:
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
    channels = images.shape[0]
    out = resample_linear_inner_axes(images, (shape[1], shape[2]))
    x, y, z = out.shape[1:]
    if x != shape[0]:
        out = _two_tap_planes(out.reshape(channels, x, y * z), shape[0])
    return out.reshape(channels, *shape)


def resample_linear_inner_axes(images: FloatArray, inner_shape: tuple[int, int]) -> FloatArray:
    """The first two steps of the order-1 :func:`resample_channels`: ``(channels, x, y, z)``
    resampled along its last two axes to ``(channels, x, *inner_shape)``.

    The first array axis is left to the caller (two planes per output plane, with
    :func:`linear_taps`), who may stream it plane by plane; the values are those of the
    whole-array path.
    """
    channels, x, y, z = images.shape
    out = np.ascontiguousarray(images, dtype=np.float32)
    if z != inner_shape[1]:  # innermost axis: two gathers, done first, on the smallest array
        first, w_first, w_next = linear_taps(z, inner_shape[1])
        rows = out.reshape(-1, z)
        gathered = np.take(rows, first, axis=1)
        gathered *= w_first
        following = np.take(rows, np.minimum(first + 1, z - 1), axis=1)
        following *= w_next
        gathered += following
        del following
        z = inner_shape[1]
        out = gathered.reshape(channels, x, y, z)
    if y != inner_shape[0]:
        out = _two_tap_planes(out.reshape(channels * x, y, z), inner_shape[0])
        y = inner_shape[0]
    return out.reshape(channels, x, y, z)


def _two_tap_planes(source: FloatArray, n_out: int) -> FloatArray:
    """Linear resampling of ``(outer, n_in, inner)`` along its middle axis to ``n_out``."""
    outer, n_in, inner = source.shape
    result = np.empty((outer, n_out, inner), dtype=np.float32)
    scratch = np.empty((outer, inner), dtype=np.float32)
    two_tap_rows(source, linear_taps(n_in, n_out), range(n_out), result, scratch)
    return result


def two_tap_rows(
    source: FloatArray,
    taps: tuple[npt.NDArray[np.intp], FloatArray, FloatArray],
    rows: range,
    out: FloatArray,
    scratch: FloatArray,
) -> None:
    """Output rows ``rows`` of the linear resampling of ``(outer, n_in, inner)`` along its
    middle axis (``taps``: :func:`linear_taps`), the k-th into ``out[:, k]``.

    Each output plane is two input planes scaled and added, plane by plane: the operands stay
    in cache and no whole-array temporary is made. ``scratch`` is an ``(outer, inner)``
    float32 buffer.
    """
    first, w_first, w_next = taps
    for k, j in enumerate(rows):
        plane = out[:, k]
        np.multiply(source[:, first[j]], w_first[j], out=plane)
        if w_next[j] != 0:
            np.multiply(source[:, first[j] + 1], w_next[j], out=scratch)
            np.add(plane, scratch, out=plane)


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
    out = np.empty((channels, *shape), dtype=np.float32)
    for channel in range(channels):
        _resample_spline_into(images[channel], shape, order, out[channel])
    return out


def _spline_workspace_size(source: tuple[int, int, int], shape: tuple[int, int, int]) -> int:
    """Float32 elements of the scratch :func:`_resample_spline_into` uses for one channel."""
    x, y, _ = source
    after_last = x * y * shape[2]
    after_middle = x * shape[1] * shape[2]
    return 2 * after_last + 2 * after_middle


def _resample_spline_into(
    image: FloatArray,
    shape: tuple[int, int, int],
    order: int,
    out: FloatArray,
    workspace: FloatArray | None = None,
) -> None:
    """One channel of :func:`resample_channels` (any spline order but 1) written into ``out``,
    a C-contiguous float32 array of ``shape``.

    Three large BLAS products, each over the array's last axis (the middle axis is moved there
    and back: two memory-speed copies beat thousands of small products). Their intermediate
    arrays are carved from ``workspace`` (float32, at least :func:`_spline_workspace_size`
    elements) when one is given, so a caller can keep that memory from study to study.
    """
    x, y, z = image.shape
    size = _spline_workspace_size((x, y, z), shape)
    if workspace is None:
        workspace = np.empty(size, dtype=np.float32)
    after_last = x * y * shape[2]
    after_middle = x * shape[1] * shape[2]
    data = np.ascontiguousarray(image, dtype=np.float32)
    if z != shape[2]:
        rows = workspace[:after_last].reshape(x * y, shape[2])
        np.matmul(data.reshape(-1, z), _resampling_matrix(z, shape[2], order).T, out=rows)
        data = rows.reshape(x, y, shape[2])
    if y != shape[1]:
        moved = workspace[after_last : 2 * after_last].reshape(x, shape[2], y)
        np.copyto(moved, data.transpose(0, 2, 1))
        products = workspace[2 * after_last : 2 * after_last + after_middle]
        products = products.reshape(x * shape[2], shape[1])
        np.matmul(moved.reshape(-1, y), _resampling_matrix(y, shape[1], order).T, out=products)
        back = workspace[2 * after_last + after_middle : size].reshape(x, shape[1], shape[2])
        np.copyto(back, products.reshape(x, shape[2], shape[1]).transpose(0, 2, 1))
        data = back
    if x != shape[0]:
        np.matmul(
            _resampling_matrix(x, shape[0], order),
            data.reshape(x, -1),
            out=out.reshape(shape[0], -1),
        )
    else:
        np.copyto(out, data.reshape(shape))


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
    channels = cropped.shape[0]

    def head_on_network_grid(mask: npt.NDArray[np.bool_]) -> FloatArray:
        on_grid: FloatArray = resample_channels(
            mask[None].astype(np.float32), target_shape, order=1
        )[0]
        return on_grid

    # The maths is per channel. Channels are z-scored side by side on the shared threads
    # (channel_threads), and the head mask is resampled to the network grid beside them; then
    # the channels are resampled one by one: the resampling's BLAS products use every core
    # already, and two channels' products at once made preprocessing ~20 % slower.
    normalised = pooled_empty((channels, *cropped_shape), np.float32)

    def normalise(channel: int) -> None:
        _zscore_channel(cropped[channel], head, outside, normalised[channel])

    head_resampling = map_channels(head_on_network_grid, [head])  # submitted now
    for _ in map_channels(normalise, range(channels)):
        pass
    # The network input and the resampling's scratch share one block from the pool: memory
    # kept from earlier studies (fresh pages cost more than this arithmetic, see array_pool).
    network_elements = channels * int(np.prod(target_shape))
    block = pooled_empty(
        (network_elements + _spline_workspace_size(cropped_shape, target_shape),), np.float32
    )
    resampled = block[:network_elements].reshape(channels, *target_shape)
    workspace = block[network_elements:]
    for channel in range(channels):
        _resample_spline_into(normalised[channel], target_shape, 3, resampled[channel], workspace)
    (head_resampled,) = head_resampling
    off_head = head_resampled < 0.5
    for channel in range(channels):
        # Spline overshoot must not invent signal outside the head.
        np.copyto(resampled[channel], 0.0, where=off_head)
    return PreprocessedCase(
        data=resampled,
        crop_box=box,
        input_shape=(int(images.shape[1]), int(images.shape[2]), int(images.shape[3])),
        cropped_shape=cropped_shape,
    )
