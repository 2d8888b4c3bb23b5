"""Sliding-window inference maths, following nnU-Net v2 (tile placement, Gaussian weighting).

Pure numpy: the network is any callable mapping a batch of tiles ``(B, C, *patch)`` to logits
``(B, K, *patch)``, so every runner (ONNX Runtime, TensorRT, torch) shares this code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter

FloatArray = npt.NDArray[np.float32]
TilePredictor = Callable[[FloatArray], FloatArray]


def tile_starts(
    image_size: Sequence[int], patch_size: Sequence[int], step: float
) -> list[list[int]]:
    """Start index of every tile along each axis (nnU-Net's ``compute_steps_for_sliding_window``).

    Tiles overlap by at least ``1 - step`` of a patch and the last tile ends at the image edge.

    Raises:
        ValueError: ``step`` is not in (0, 1] or the image is smaller than the patch.
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if any(i < p for i, p in zip(image_size, patch_size)):
        raise ValueError(f"image {tuple(image_size)} is smaller than patch {tuple(patch_size)}")
    starts = []
    for size, patch in zip(image_size, patch_size):
        n_steps = int(np.ceil((size - patch) / (patch * step))) + 1
        if n_steps > 1:
            actual = (size - patch) / (n_steps - 1)
            starts.append([int(np.round(actual * i)) for i in range(n_steps)])
        else:
            starts.append([0])
    return starts


@lru_cache(maxsize=8)
def gaussian_importance_map(
    patch_size: tuple[int, ...], sigma_scale: float = 1.0 / 8
) -> FloatArray:
    """Tile weights: a Gaussian centred on the patch, sigma = patch * ``sigma_scale``.

    Scaled to a maximum of 10 with no zero entries, as nnU-Net does.
    """
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(p // 2 for p in patch_size)] = 1.0
    weights = gaussian_filter(impulse, [p * sigma_scale for p in patch_size], mode="constant")
    weights = weights / weights.max() * 10.0
    weights[weights == 0] = weights[weights > 0].min()
    result: FloatArray = weights.astype(np.float32)
    result.setflags(write=False)
    return result


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of spatial ``axes`` to flip, the identity first (8 for three axes)."""
    combos: list[tuple[int, ...]] = []
    for r in range(len(axes) + 1):
        combos.extend(itertools.combinations(axes, r))
    return combos


def _tile_slices(
    starts: list[list[int]], patch_size: Sequence[int]
) -> Iterator[tuple[slice, slice, slice]]:
    for sx, sy, sz in itertools.product(*starts):
        yield (
            slice(sx, sx + patch_size[0]),
            slice(sy, sy + patch_size[1]),
            slice(sz, sz + patch_size[2]),
        )


def pad_to_patch(
    volume: FloatArray, patch_size: Sequence[int]
) -> tuple[FloatArray, tuple[slice, ...]]:
    """Zero-pad ``(C, *spatial)`` so each axis is at least the patch; return the unpad slices."""
    pads = []
    unpad: list[slice] = [slice(None)]
    for size, patch in zip(volume.shape[1:], patch_size):
        total = max(0, patch - size)
        before = total // 2
        pads.append((before, total - before))
        unpad.append(slice(before, before + size))
    # A shortfall of one voxel pads only after (before = 0): test both sides.
    if not any(before or after for before, after in pads):
        return volume, tuple(unpad)
    return np.pad(volume, [(0, 0), *pads], mode="constant"), tuple(unpad)


@dataclass(frozen=True)
class SlidingWindowOutput:
    """What :func:`sliding_window_predict` returns."""

    logits: FloatArray
    """(num_classes, x, y, z) float32 Gaussian-weighted average of the tile logits."""
    disagreement: FloatArray | None
    """(x, y, z) float32 disagreement between mirror flips (see
    :func:`sliding_window_predict`), or None when it was not asked for or no axis is mirrored."""


def sliding_window_logits(
    volume: FloatArray,
    predict: TilePredictor,
    *,
    patch_size: tuple[int, int, int],
    num_classes: int,
    step: float = 0.5,
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
) -> FloatArray:
    """Gaussian-weighted average of tile logits over the whole volume.

    Args:
        volume: (channels, x, y, z) network input.
        predict: maps (B, channels, *patch) to (B, num_classes, *patch) logits.
        patch_size: network tile size.
        num_classes: logit channels.
        step: tile step as a fraction of the patch.
        batch_size: tiles per ``predict`` call (all mirror flips of a tile travel together).
        mirror_axes: spatial axes (0-2) to mirror for test-time augmentation; empty for none.

    Returns:
        (num_classes, x, y, z) float32 logits.
    """
    return sliding_window_predict(
        volume,
        predict,
        patch_size=patch_size,
        num_classes=num_classes,
        step=step,
        batch_size=batch_size,
        mirror_axes=mirror_axes,
    ).logits


def flip_disagreement(flip_logits: Sequence[FloatArray]) -> FloatArray:
    """Per-voxel disagreement of several predictions of one tile (already un-flipped).

    The mean over predictions of the L1 distance between each prediction's softmax and the
    mean softmax: 0 where every flip agrees, at most ``2 (1 - 1/n)`` for ``n`` predictions.

    Args:
        flip_logits: one ``(num_classes, *patch)`` logit array per mirror flip.

    Returns:
        ``patch``-shaped float32.

    Raises:
        ValueError: no predictions were given.
    """
    if not flip_logits:
        raise ValueError("flip_disagreement needs at least one prediction, got none")
    probabilities = [softmax(np.array(logits, dtype=np.float32)) for logits in flip_logits]
    mean = np.mean(probabilities, axis=0, dtype=np.float32)
    distance = np.zeros(mean.shape[1:], dtype=np.float32)
    for probability in probabilities:
        distance += np.abs(probability - mean).sum(axis=0)
    distance /= len(probabilities)
    return distance


def sliding_window_predict(
    volume: FloatArray,
    predict: TilePredictor,
    *,
    patch_size: tuple[int, int, int],
    num_classes: int,
    step: float = 0.5,
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
    return_disagreement: bool = False,
) -> SlidingWindowOutput:
    """Gaussian-weighted tile logits and, optionally, how much the mirror flips disagree.

    With ``return_disagreement`` and at least one mirrored axis, each tile's disagreement
    (:func:`flip_disagreement`) is blended with the same Gaussian weights as the logits. It
    costs one extra float32 volume and a per-tile softmax of every flip; the logits are the
    same as without it.

    Args:
        volume: (channels, x, y, z) network input.
        predict: maps (B, channels, *patch) to (B, num_classes, *patch) logits.
        patch_size: network tile size.
        num_classes: logit channels.
        step: tile step as a fraction of the patch.
        batch_size: tiles per ``predict`` call (all mirror flips of a tile travel together).
        mirror_axes: spatial axes (0-2) to mirror for test-time augmentation; empty for none.
        return_disagreement: also compute the flips' disagreement (needs ``mirror_axes``).

    Raises:
        ValueError: the network returned logits of the wrong shape.
    """
    padded, unpad = pad_to_patch(volume, patch_size)
    spatial = padded.shape[1:]
    weights = gaussian_importance_map(tuple(patch_size))
    logit_sum = np.zeros((num_classes, *spatial), dtype=np.float32)
    weight_sum = np.zeros(spatial, dtype=np.float32)
    flips = mirror_combinations(mirror_axes)
    with_disagreement = return_disagreement and len(flips) > 1
    disagreement_sum = np.zeros(spatial, dtype=np.float32) if with_disagreement else None
    tiles = list(_tile_slices(tile_starts(spatial, patch_size, step), patch_size))
    tiles_per_call = max(1, batch_size // len(flips)) if len(flips) > 1 else batch_size
    weighted = np.empty((num_classes, *patch_size), dtype=np.float32)
    """One tile's Gaussian-weighted logits, reused (no per-tile temporaries)."""
    for first in range(0, len(tiles), tiles_per_call):
        group = tiles[first : first + tiles_per_call]
        batch = np.stack(
            [
                np.flip(padded[(slice(None), *tile)], axis=tuple(a + 1 for a in flip))
                if flip
                else padded[(slice(None), *tile)]
                for tile in group
                for flip in flips
            ]
        ).astype(np.float32, copy=False)
        logits = np.asarray(predict(np.ascontiguousarray(batch)), dtype=np.float32)
        if logits.shape != (len(batch), num_classes, *patch_size):
            raise ValueError(
                f"network returned shape {logits.shape}, expected "
                f"{(len(batch), num_classes, *patch_size)}"
            )
        for index, tile in enumerate(group):
            if len(flips) == 1:  # no mirroring: the tile's logits as they are
                np.multiply(logits[index], weights, out=weighted)
            else:
                tile_logits = np.zeros((num_classes, *patch_size), dtype=np.float32)
                unflipped: list[FloatArray] = []
                for offset, flip in enumerate(flips):
                    out = logits[index * len(flips) + offset]
                    restored = np.flip(out, axis=tuple(a + 1 for a in flip)) if flip else out
                    tile_logits += restored
                    if disagreement_sum is not None:
                        unflipped.append(restored)
                tile_logits /= len(flips)
                np.multiply(tile_logits, weights, out=weighted)
            logit_sum[(slice(None), *tile)] += weighted
            weight_sum[tile] += weights
            if disagreement_sum is not None:
                disagreement_sum[tile] += flip_disagreement(unflipped) * weights
    logit_sum /= weight_sum  # in place: the sum is not needed after
    averaged: FloatArray = logit_sum
    disagreement: FloatArray | None = None
    if disagreement_sum is not None:
        disagreement_sum /= weight_sum
        disagreement = disagreement_sum[unpad[1:]]
    return SlidingWindowOutput(logits=averaged[unpad], disagreement=disagreement)


def softmax(logits: FloatArray, axis: int = 0) -> FloatArray:
    """Numerically stable softmax."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    result: FloatArray = shifted.astype(np.float32, copy=False)
    return result


def sigmoid(logits: FloatArray) -> FloatArray:
    """Element-wise logistic function (region-based networks), float32."""
    result: FloatArray = (1.0 / (1.0 + np.exp(-logits.astype(np.float32)))).astype(np.float32)
    return result


def activate(
    logits: FloatArray,
    output_kind: Literal["softmax_labels", "sigmoid_regions"],
    *,
    axis: int = 0,
) -> FloatArray:
    """The network's probabilities from its logits, as ``output_kind`` says.

    Args:
        logits: the network's output, classes (or regions) along ``axis``.
        output_kind: ``softmax_labels`` (a softmax over ``axis``) or ``sigmoid_regions`` (one
            sigmoid per region, element-wise).
        axis: the class axis (0 for a volume, 1 for a batch of tiles).

    Returns:
        float32 probabilities, the shape of ``logits``.
    """
    if output_kind == "sigmoid_regions":
        return sigmoid(logits)
    return softmax(logits, axis=axis)
