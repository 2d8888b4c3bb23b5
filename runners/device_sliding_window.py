"""Sliding-window inference with tiles and accumulators resident on the device (torch tensors).

The same maths as :mod:`runners.sliding_window` (nnU-Net's tile placement, Gaussian weights,
batched mirror flips), but the volume is copied to the device once, tiles are cut, flipped and
accumulated there, and only the averaged logits come back: no host round trip per tile. Used
by the torch engine on any device, and by the ONNX Runtime CUDA and native TensorRT engines
(through IO binding on tensor addresses) on a GPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from runners.sliding_window import (
    gaussian_importance_map,
    mirror_combinations,
    pad_to_patch,
    tile_starts,
)

BatchPredictor = Callable[[torch.Tensor], torch.Tensor]
"""Maps a contiguous ``(B, C, *patch)`` tensor on the device to ``(B, K, *patch)`` logits."""


def device_sliding_window_logits(
    volume: npt.NDArray[np.float32],
    predict: BatchPredictor,
    *,
    device: torch.device,
    patch_size: tuple[int, int, int],
    num_classes: int,
    step: float,
    batch_size: int,
    mirror_axes: Sequence[int] = (),
    input_dtype: torch.dtype = torch.float32,
) -> npt.NDArray[np.float32]:
    """Gaussian-weighted average of tile logits, computed on ``device``.

    Args:
        volume: ``(C, x, y, z)`` preprocessed network input (host memory).
        predict: the network on one batch (see :data:`BatchPredictor`).
        device: where the volume, tiles and accumulators live.
        patch_size: network tile size.
        num_classes: logit channels.
        step: tile step as a fraction of the patch.
        batch_size: tiles per network call; all mirror flips of a tile travel in one call, so a
            call holds ``max(batch_size // flips, 1) * flips`` tiles.
        mirror_axes: spatial axes (0-2) to mirror; empty for none.
        input_dtype: dtype of the tiles handed to ``predict`` (fp16 halves the copies for an
            engine that runs in fp16 anyway).

    Returns:
        ``(num_classes, x, y, z)`` float32 logits on the input grid (host memory).

    Raises:
        ValueError: ``predict`` returned a batch of the wrong shape.
    """
    padded, unpad = pad_to_patch(volume, patch_size)
    spatial = tuple(int(s) for s in padded.shape[1:])
    image = torch.from_numpy(np.ascontiguousarray(padded)).to(device=device, dtype=input_dtype)
    weights = torch.from_numpy(np.array(gaussian_importance_map(tuple(patch_size)))).to(device)
    logit_sum = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=device)
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=device)
    flips = mirror_combinations(mirror_axes)
    tiles = [
        tuple(slice(start, start + size) for start, size in zip(starts, patch_size))
        for starts in itertools.product(*tile_starts(spatial, patch_size, step))
    ]
    tiles_per_call = max(1, batch_size // len(flips))
    with torch.inference_mode():
        for first in range(0, len(tiles), tiles_per_call):
            group = tiles[first : first + tiles_per_call]
            batch = torch.stack(
                [
                    torch.flip(image[(slice(None), *tile)], dims=[a + 1 for a in flip])
                    if flip
                    else image[(slice(None), *tile)]
                    for tile in group
                    for flip in flips
                ]
            ).contiguous()
            logits = predict(batch)
            if tuple(logits.shape) != (len(batch), num_classes, *patch_size):
                raise ValueError(
                    f"network returned shape {tuple(logits.shape)}, expected "
                    f"{(len(batch), num_classes, *patch_size)}"
                )
            logits = logits.float()
            for index, tile in enumerate(group):
                tile_logits = torch.zeros(
                    (num_classes, *patch_size), dtype=torch.float32, device=device
                )
                for offset, flip in enumerate(flips):
                    out = logits[index * len(flips) + offset]
                    tile_logits += torch.flip(out, dims=[a + 1 for a in flip]) if flip else out
                logit_sum[(slice(None), *tile)] += tile_logits * (weights / len(flips))
                weight_sum[tile] += weights
        averaged = (logit_sum / weight_sum)[unpad]
    result: npt.NDArray[np.float32] = averaged.cpu().numpy().astype(np.float32, copy=False)
    return result
