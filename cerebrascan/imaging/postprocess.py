"""Inverse of preprocessing: network probabilities back to labels on the input grid."""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cerebrascan.imaging.array_pool import pooled_empty, pooled_zeros
from cerebrascan.imaging.channel_threads import map_channels
from cerebrascan.imaging.preprocess import (
    PreprocessedCase,
    linear_taps,
    mask_bounding_box,
    resample_channels,
    resample_linear_inner_axes,
    two_tap_rows,
)

logger = logging.getLogger(__name__)


def probabilities_to_input_grid(
    probabilities: npt.NDArray[np.float32], case: PreprocessedCase
) -> npt.NDArray[np.float32]:
    """Resample class probabilities to the cropped input grid (linear, as nnU-Net does).

    Returns:
        (classes, *case.cropped_shape) float32.
    """
    return resample_channels(probabilities, case.cropped_shape, order=1)


def labels_on_input_grid(
    cropped_probabilities: npt.NDArray[np.float32],
    case: PreprocessedCase,
    output_labels: list[int],
) -> npt.NDArray[np.uint8]:
    """Argmax into label values, pasted into a background volume of the input shape.

    Args:
        cropped_probabilities: (classes, *cropped_shape) probabilities.
        case: the preprocessing record (crop box and input shape).
        output_labels: label value of each probability channel (channel 0 is background).
    """
    if cropped_probabilities.shape[0] != len(output_labels):
        raise ValueError(
            f"{cropped_probabilities.shape[0]} probability channels but "
            f"{len(output_labels)} output labels {output_labels}"
        )
    lookup = np.asarray(output_labels, dtype=np.uint8)
    labels = np.zeros(case.input_shape, dtype=np.uint8)
    labels[case.crop_box] = lookup[channel_argmax(cropped_probabilities)]
    return labels


def channel_argmax(probabilities: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """``np.argmax(probabilities, axis=0)`` as uint8, ties to the first channel as there, ~5x
    faster.

    ``argmax`` over the outer axis of a large array walks memory with a channel-sized stride;
    comparing whole channels in turn streams it once per channel instead. A uint8 index is an
    eighth of the memory of numpy's ``intp`` one.

    Raises:
        ValueError: more than 256 channels.
    """
    if probabilities.shape[0] > 256:
        raise ValueError(f"{probabilities.shape[0]} channels: a uint8 argmax holds at most 256")
    best = probabilities[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    higher = np.empty(best.shape, dtype=bool)
    for channel in range(1, probabilities.shape[0]):
        _argmax_step(channel, probabilities[channel], best, index, higher)
    return index


def probabilities_on_input_grid(
    cropped_probabilities: npt.NDArray[np.float32],
    case: PreprocessedCase,
    output_labels: list[int],
) -> npt.NDArray[np.float16]:
    """Probabilities pasted into the input grid, one channel per label value, as float16.

    Outside the crop the background channel is 1 and every other channel 0.

    Args:
        cropped_probabilities: (classes, *cropped_shape) probabilities.
        case: the preprocessing record (crop box and input shape).
        output_labels: label value of each probability channel; must be a permutation of
            ``0 .. classes - 1`` so channel ``c`` of the result is label ``c``.

    Raises:
        ValueError: ``output_labels`` is not such a permutation.
    """
    classes = cropped_probabilities.shape[0]
    if sorted(output_labels) != list(range(classes)):
        raise ValueError(
            f"output_labels {output_labels} are not a permutation of 0..{classes - 1}; "
            "cannot lay probabilities out by label value"
        )
    full = np.zeros((classes, *case.input_shape), dtype=np.float16)
    full[0] = 1.0
    for channel, label in enumerate(output_labels):
        to_float16(cropped_probabilities[channel], out=full[(label, *case.crop_box)])
    return full


def labels_and_probabilities_on_input_grid(
    network_probabilities: npt.NDArray[np.float32],
    case: PreprocessedCase,
    output_labels: list[int],
    *,
    keep_probabilities: bool,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float16] | None]:
    """:func:`labels_on_input_grid` and (when kept) :func:`probabilities_on_input_grid` of the
    network's probabilities, in two steps.

    1. Per channel (side by side on the shared threads): the two inner axes, resampled on the
       network's first-axis planes (fewer than the crop's).
    2. A block of crop planes at a time: the first axis (two network planes scaled and added),
       the float16 copy and a running argmax, while the block is in cache.

    The same values as resampling every channel first (:func:`probabilities_to_input_grid`),
    then taking the argmax and pasting: resampling is per channel and per plane, the same
    float32 operations in the same order, and the running argmax breaks ties to the first
    channel as :func:`channel_argmax` does. No crop-sized float32 array is written whole and
    read back.

    Args:
        network_probabilities: (classes, *network grid) probabilities.
        case: the preprocessing record.
        output_labels: label value of each channel; with ``keep_probabilities`` a permutation
            of ``0 .. classes - 1``.
        keep_probabilities: also return the float16 probabilities on the input grid.

    Raises:
        ValueError: channel count and ``output_labels`` disagree, or (with
            ``keep_probabilities``) ``output_labels`` is not a permutation.
    """
    classes = network_probabilities.shape[0]
    if classes != len(output_labels):
        raise ValueError(
            f"{classes} probability channels but {len(output_labels)} output labels {output_labels}"
        )
    if classes > 256:
        raise ValueError(f"{classes} channels: a uint8 argmax holds at most 256")
    if keep_probabilities and sorted(output_labels) != list(range(classes)):
        raise ValueError(
            f"output_labels {output_labels} are not a permutation of 0..{classes - 1}; "
            "cannot lay probabilities out by label value"
        )
    # Arrays on the whole input grid come from the process's pool (imaging/array_pool.py):
    # memory kept from earlier studies, where fresh pages cost more than this arithmetic.
    full = pooled_empty((classes, *case.input_shape), np.float16) if keep_probabilities else None
    crop_x, crop_y, crop_z = case.cropped_shape

    def inner_axes(channel: int) -> npt.NDArray[np.float32]:
        if full is not None:  # outside the crop: certainly background (label 0)
            label = output_labels[channel]
            fill_outside(full[label], case.crop_box, 1.0 if label == 0 else 0.0)
        on_planes: npt.NDArray[np.float32] = resample_linear_inner_axes(
            network_probabilities[channel : channel + 1], (crop_y, crop_z)
        )[0]
        return on_planes

    # Step 1, per channel side by side: the two inner axes, on the network's (fewer) x-planes.
    planes = list(map_channels(inner_axes, range(classes)))
    labels = pooled_zeros(case.input_shape, np.uint8)
    # Step 2 in this thread: the first axis, the float16 copy and the argmax, a few crop planes
    # at a time while they are in cache. (Its many small numpy calls hold the GIL often: two
    # threads splitting the planes were slower than one, ~21 vs ~17 ms on two cores.)
    _crop_planes_to_outputs(planes, crop_x, output_labels, case.crop_box, labels, full)
    return labels, full


def _crop_planes_to_outputs(
    planes: list[npt.NDArray[np.float32]],
    crop_x: int,
    output_labels: list[int],
    crop_box: tuple[slice, slice, slice],
    labels: npt.NDArray[np.uint8],
    full: npt.NDArray[np.float16] | None,
) -> None:
    """Step 2 of :func:`labels_and_probabilities_on_input_grid`: crop planes along the first
    axis, each two network planes scaled and added (:func:`two_tap_rows`, as the whole-array
    resampling does), then converted to float16 into ``full`` and merged into the argmax
    written to ``labels``, a block of planes at a time, so no whole-crop array is made or
    streamed through memory again."""
    network_x, *inner = planes[0].shape
    taps = linear_taps(network_x, crop_x) if network_x != crop_x else None
    # two_tap_rows' (outer, n_in, inner) view of each channel, made once
    rows_of = [source.reshape(1, network_x, -1) for source in planes]
    lookup = (
        None
        if list(output_labels) == list(range(len(output_labels)))
        else np.asarray(output_labels, dtype=np.uint8)
    )
    # enough planes per block for the hardware float16 cast, few enough to stay in cache
    wanted = -(-HARDWARE_CAST_MIN_ELEMENTS // max(1, inner[0] * inner[1]))
    block = max(1, min(PLANES_PER_BLOCK_MAX, wanted))
    values = np.empty((block, *inner), dtype=np.float32)
    best = np.empty_like(values)
    scratch = np.empty((1, inner[0] * inner[1]), dtype=np.float32)
    index = np.empty(values.shape, dtype=np.uint8)
    higher = np.empty(values.shape, dtype=bool)
    x_start, box_y, box_z = crop_box[0].start or 0, crop_box[1], crop_box[2]
    for start in range(0, crop_x, block):
        stop = min(start + block, crop_x)
        count = stop - start
        for channel, source in enumerate(planes):
            target = best[:count] if channel == 0 else values[:count]
            if taps is None:
                np.copyto(target, source[start:stop])
            else:
                two_tap_rows(
                    rows_of[channel],
                    taps,
                    range(start, stop),
                    target.reshape(1, count, -1),
                    scratch,
                )
            if full is not None:
                crop = full[output_labels[channel], x_start + start : x_start + stop]
                to_float16(target, out=crop[:, box_y, box_z])
            if channel == 0:
                index[:count] = 0
            else:
                _argmax_step(channel, target, best[:count], index[:count], higher[:count])
        destination = labels[x_start + start : x_start + stop, box_y, box_z]
        if lookup is None:
            np.copyto(destination, index[:count])
        else:
            destination[...] = lookup[index[:count]]


def _argmax_step(
    channel: int,
    values: npt.NDArray[np.float32],
    best: npt.NDArray[np.float32],
    index: npt.NDArray[np.uint8],
    higher: npt.NDArray[np.bool_],
) -> None:
    """Merge channel ``channel``'s ``values`` into a running argmax (``best`` so far and its
    ``index``; ``higher`` a scratch mask): ties stay with the earlier channel, as in
    ``np.argmax``."""
    np.greater(values, best, out=higher)
    np.copyto(index, np.uint8(channel), where=higher)
    np.maximum(best, values, out=best)


PLANES_PER_BLOCK_MAX = 16
"""At most this many crop planes per block of :func:`_crop_planes_to_outputs`."""


def fill_outside(volume: npt.NDArray[Any], box: tuple[slice, ...], value: float) -> None:
    """Set every element of ``volume`` outside ``box`` to ``value``, leaving the box as it is.

    At most two slabs per axis are written, so a caller that fills the box itself next writes
    each element once.

    Raises:
        ValueError: ``box`` has not one slice per axis of ``volume``, or a slice has a step.
    """
    if len(box) != volume.ndim or any(part.step not in (None, 1) for part in box):
        raise ValueError(f"box {box} is not one unit-step slice per axis of shape {volume.shape}")
    inner = volume
    for axis, part in enumerate(box):
        start, stop, _ = part.indices(inner.shape[axis])
        before = (slice(None),) * axis + (slice(0, start),)
        after = (slice(None),) * axis + (slice(max(stop, start), None),)
        inner[before] = value
        inner[after] = value
        inner = inner[(slice(None),) * axis + (slice(start, max(stop, start)),)]


FLOAT16_SMALLEST_NORMAL = 2.0**-14


SLAB_ELEMENTS = 1 << 18
"""Elements per slab of :func:`to_float16`: its temporaries (1 MB of float32 each) stay in cache
and in one thread's reused workspace."""

_workspaces = threading.local()


def _workspace() -> dict[str, npt.NDArray[Any]]:
    """This thread's slab buffers, allocated once per thread and reused for every call.

    Fresh whole-channel temporaries cost a page fault per page on every request (~0.2 ms each on
    a virtual machine, 0.3 s per study in the server), which is more than the arithmetic.
    """
    buffers: dict[str, npt.NDArray[Any]] | None = getattr(_workspaces, "buffers", None)
    if buffers is None:
        buffers = {
            name: np.empty(SLAB_ELEMENTS, dtype=dtype)
            for name, dtype in (
                ("magnitude", np.uint32),
                ("mask32", np.uint32),
                ("work32", np.uint32),
                ("small", np.bool_),
                ("normal16", np.uint16),
                ("pattern16", np.uint16),
                ("mask16", np.uint16),
            )
        }
        _workspaces.buffers = buffers
    return buffers


HARDWARE_CAST_MIN_ELEMENTS = 1 << 16
"""From this size on :func:`to_float16` casts with ONNX Runtime's ``Cast`` kernel (below it, a
session call costs more than the numpy path)."""

_PROBE = np.array(
    [
        *(2**-25, 3 * 2**-25, 5 * 2**-25, 2**-14 * (1 - 2**-12), 2**-14, 1 / 3, 0.999, 1.0),
        *(65504, 65520, 7e4, 0.0, -0.0, 1e-45, -(2**-24), np.inf, -np.inf, np.nan, -np.nan),
    ],
    dtype=np.float32,
)
"""Values whose float16 casts differ in every way one can go wrong (ties to even, subnormals,
the smallest normal, overflow, signed zero, NaN): the kernel is used only if it matches
numpy's."""

CAST_TO_FLOAT16_ONNX = (
    b'\x08\t\x12\x0bcerebrascan:O\n!\n\x06values\x12\x06halves"\x04Cast*\t\n\x02to\x18\n'
    b"\xa0\x01\x02\x12\nto_float16Z\x0e\n\x06values\x12\x04\n\x02\x08\x01b\x0e\n\x06halves"
    b"\x12\x04\n\x02\x08\nB\x04\n\x00\x10\x11"
)
"""The ONNX model of one ``Cast`` from float32 ``values`` to float16 ``halves`` (opset 17),
serialised: the onnx package is not in the bento (tests/test_preprocess.py rebuilds it with
onnx's helpers and compares)."""


@functools.lru_cache(maxsize=1)
def _hardware_cast() -> Any | None:
    """An ONNX Runtime session of one ``Cast`` to float16 (the CPU's F16C / AVX-512 FP16
    conversion through MLAS: ~0.6 ms for a 2.8M-voxel channel against ~20 ms for the numpy
    path), or None when onnxruntime is missing or its result differs from numpy's on
    :data:`_PROBE`. Built once per process (two threads at first use may both build it; the
    sessions are equal); one thread per call (callers run channels side by side already)."""
    try:
        import onnxruntime
    except ImportError:
        logger.info("float16 conversion: onnxruntime missing, using the numpy path")
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        CAST_TO_FLOAT16_ONNX, options, providers=["CPUExecutionProvider"]
    )
    probe = np.tile(_PROBE, 4096)  # long enough for the vector kernel, not only its tail
    with np.errstate(over="ignore"):
        expected = probe.astype(np.float16).view(np.uint16)
    (converted,) = session.run(None, {"values": probe})
    if not np.array_equal(np.asarray(converted).view(np.uint16), expected):
        logger.warning("float16 conversion: onnxruntime's Cast differs from numpy's; not used")
        return None
    return session


# A forked child builds its own session: one is not safe to share over a fork.
os.register_at_fork(after_in_child=_hardware_cast.cache_clear)


def to_float16(
    values: npt.NDArray[np.float32], out: npt.NDArray[np.float16] | None = None
) -> npt.NDArray[np.float16]:
    """``values.astype(np.float16)``, bit for bit, without numpy's slow subnormal path.

    From :data:`HARDWARE_CAST_MIN_ELEMENTS` on, ONNX Runtime's ``Cast`` kernel converts (the
    CPU's conversion instructions, checked against numpy's cast once per process); otherwise,
    or where it is unusable, the numpy path below.

    Probabilities far from a class are tiny (1e-15 ...): as float16 they are subnormal or zero,
    and numpy converts those ~15x slower than normal numbers. A float16 subnormal is an integer
    multiple of 2**-24 whose bit pattern is that integer: ``|v| + 0.5`` in float32 rounds
    ``|v|`` to a multiple of 2**-24 (half to even, as the cast does), so its low mantissa bits
    are that pattern. Those are used where ``|v| < 2**-14``; the rest is cast with the small
    values zeroed. The two are merged with bit masks, not ``np.where`` or a masked copy: those
    branch per element and run ~50x slower on a mask that changes every few voxels. The work
    goes slab by slab along the first axis (:data:`SLAB_ELEMENTS`) in the thread's reused
    buffers, so no call allocates whole-array temporaries.

    Args:
        values: float32 array.
        out: where to write the result (same shape, any strides, e.g. a crop of a larger
            volume); a new array when None.

    Raises:
        ValueError: ``out`` is not a float16 array of the values' shape.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if out is None:
        out = np.empty(values.shape, dtype=np.float16)
    elif out.shape != values.shape or out.dtype != np.float16:
        raise ValueError(
            f"out is {out.dtype}{out.shape}; expected float16{values.shape} like the values"
        )
    if values.ndim == 0:
        out[...] = values.astype(np.float16)
        return out
    if values.size >= HARDWARE_CAST_MIN_ELEMENTS:
        session = _hardware_cast()
        if session is not None:
            (converted,) = session.run(None, {"values": values})
            np.copyto(out, converted)
            return out
    return _to_float16_numpy(values, out)


def _to_float16_numpy(
    values: npt.NDArray[np.float32], out: npt.NDArray[np.float16]
) -> npt.NDArray[np.float16]:
    """:func:`to_float16` in numpy, slab by slab, for a contiguous float32 ``values``."""
    plane = int(np.prod(values.shape[1:], dtype=np.int64))
    step = max(1, SLAB_ELEMENTS // max(plane, 1))
    if plane > SLAB_ELEMENTS:  # a plane larger than a slab: one call's own temporaries
        for index in range(values.shape[0]):
            _to_float16_numpy(values[index], out[index])
        return out
    buffers = _workspace()
    for start in range(0, values.shape[0], step):
        _slab_to_float16(values[start : start + step], out[start : start + step], buffers)
    return out


def _slab_to_float16(
    values: npt.NDArray[np.float32],
    out: npt.NDArray[np.float16],
    buffers: dict[str, npt.NDArray[Any]],
) -> None:
    """:func:`to_float16` of one slab (at most :data:`SLAB_ELEMENTS`) in ``buffers``."""
    size, shape = values.size, values.shape

    def buffer(name: str) -> npt.NDArray[Any]:
        return buffers[name][:size].reshape(shape)

    bits = values.view(np.uint32)
    magnitude, mask32, work32 = buffer("magnitude"), buffer("mask32"), buffer("work32")
    small = buffer("small")
    normal16, pattern16, mask16 = buffer("normal16"), buffer("pattern16"), buffer("mask16")
    np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=magnitude)
    np.less(magnitude, np.uint32(0x38800000), out=small)  # |v| < 2**-14 (NaN is not small)
    np.copyto(mask32, small)
    np.multiply(mask32, np.uint32(0xFFFFFFFF), out=mask32)
    # the normal cast, of the values with the small ones set to +0.0
    np.invert(mask32, out=work32)
    np.bitwise_and(bits, work32, out=work32)
    np.copyto(normal16.view(np.float16), work32.view(np.float32), casting="same_kind")
    # the subnormal patterns: round(|v| * 2**24) from the bits of |v| + 0.5, and the sign
    np.add(magnitude.view(np.float32), np.float32(0.5), out=work32.view(np.float32))
    np.subtract(work32, np.uint32(0x3F000000), out=work32)  # the bits of 0.5
    np.right_shift(bits, np.uint32(16), out=magnitude)
    np.bitwise_and(magnitude, np.uint32(0x8000), out=magnitude)
    np.bitwise_or(work32, magnitude, out=work32)
    np.copyto(pattern16, work32, casting="unsafe")  # the low 16 bits
    np.copyto(mask16, mask32, casting="unsafe")
    # normal ^ ((normal ^ pattern) & mask): the pattern where small, the cast elsewhere
    np.bitwise_xor(normal16, pattern16, out=pattern16)
    np.bitwise_and(pattern16, mask16, out=pattern16)
    np.bitwise_xor(normal16, pattern16, out=pattern16)
    np.copyto(out.view(np.uint16), pattern16)


def scalar_map_on_input_grid(
    network_map: npt.NDArray[np.float32], case: PreprocessedCase
) -> npt.NDArray[np.float16]:
    """A per-voxel map on the network grid, resampled (linear) into the input grid as float16.

    Zero outside the crop.
    """
    cropped = resample_channels(network_map[None], case.cropped_shape, order=1)[0]
    full = pooled_zeros(case.input_shape, np.float16)
    to_float16(cropped, out=full[case.crop_box])
    return full


def remove_small_components(
    labels: npt.NDArray[np.uint8],
    spacing_mm: tuple[float, float, float],
    min_volume_ml: float,
) -> tuple[npt.NDArray[np.uint8], int]:
    """Set to background every whole-tumour island (26-connected) smaller than ``min_volume_ml``.

    Scattered false-positive voxels far from the tumour would otherwise inflate the lesion
    count and the maximum diameter. A real satellite lesion under the threshold is lost too,
    so the threshold is configurable and 0 disables this step.

    Returns:
        The cleaned labels (a copy only if something was removed) and the number of islands
        removed.

    Raises:
        ValueError: ``min_volume_ml`` is negative.
    """
    if min_volume_ml < 0:
        raise ValueError(f"min_volume_ml must be >= 0, got {min_volume_ml}")
    if min_volume_ml == 0:
        return labels, 0
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    # Label islands only inside the tumour's bounding box: nothing lies outside it.
    tumour = labels > 0
    box = mask_bounding_box(tumour)
    if box is None:  # no tumour
        return labels, 0
    islands, _ = ndimage.label(tumour[box], structure=np.ones((3, 3, 3), dtype=bool))
    sizes_ml = np.bincount(islands.ravel())[1:] * voxel_ml
    small = np.flatnonzero(sizes_ml < min_volume_ml) + 1
    if small.size == 0:
        return labels, 0
    cleaned = labels.copy()
    cleaned[box][np.isin(islands, small)] = 0
    return cleaned, int(small.size)
