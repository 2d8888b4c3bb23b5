"""Cross-case sliding window with every case resident on the engine's device (torch tensors).

The device counterpart of :mod:`runners.cross_case_batching` for the runner service on a GPU:
each case's volume crosses to the device once; tiles of all cases are cut, flipped, packed into
shared network calls and Gaussian-accumulated there; each case's averaged logits cross back once.
The tile plan, packing order, weights and arithmetic are the host module's
(:func:`plan_tile_jobs`, :func:`pack_batches`), so a case's logits do not depend on the path
(up to float summation order on the device) nor on which cases shared its batches.

Fault isolation is the host module's too: volumes are checked before upload, and a failing mixed
batch is re-run case by case so only the failing case is marked failed.

The flips' disagreement (an uncertainty map) is computed by the host path only; the runner
service sends cases that ask for it there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from runners.cross_case_batching import (
    CaseRequest,
    CrossCaseResult,
    TileJob,
    pack_batches,
    plan_tile_jobs,
    validate_case_volume,
)
from runners.sliding_window import (
    SlidingWindowOutput,
    gaussian_importance_map,
    mirror_combinations,
    pad_to_patch,
)

logger = logging.getLogger(__name__)

DeviceTilePredictor = Callable[[torch.Tensor], torch.Tensor]
"""Maps a contiguous ``(B, C, *patch)`` tensor on the device to ``(B, K, *patch)`` logits there."""


@dataclass
class _DeviceCase:
    padded: torch.Tensor
    unpad: tuple[slice, ...]
    logit_sum: torch.Tensor
    weight_sum: torch.Tensor
    error: str | None = None


def _flip_dims(flip: tuple[int, ...]) -> list[int]:
    return [axis + 1 for axis in flip]


def device_cross_case_sliding_window(
    cases: Sequence[CaseRequest],
    predict: DeviceTilePredictor,
    *,
    device: torch.device,
    patch_size: tuple[int, int, int],
    num_classes: int,
    channels: int,
    step: float = 0.5,
    batch_size: int = 2,
) -> CrossCaseResult:
    """Gaussian-weighted tile logits of several cases on ``device``, tiles sharing network calls.

    Args:
        cases: the volumes and their options (``return_disagreement`` is refused: host path).
        predict: the engine's network call on device tiles (:data:`DeviceTilePredictor`).
        device: where volumes, tiles and accumulators live.
        patch_size: network tile size.
        num_classes: logit channels.
        channels: input channels of the network (a case with another count fails alone).
        step: tile step as a fraction of the patch.
        batch_size: most tile images per ``predict`` call (all flips of a tile go together).

    Returns:
        Per case, its averaged logits on the host (disagreement None) or why it failed.

    Raises:
        ValueError: a case asks for the flips' disagreement.
    """
    if any(case.return_disagreement for case in cases):
        raise ValueError("the flips' disagreement is computed by the host cross-case window")
    weights = torch.from_numpy(np.array(gaussian_importance_map(tuple(patch_size)))).to(device)
    states: list[_DeviceCase | None] = []
    errors: list[str | None] = []
    flips_per_case: list[list[tuple[int, ...]]] = []
    with torch.inference_mode():
        for request in cases:
            problem = validate_case_volume(request.volume, channels)
            flips_per_case.append(mirror_combinations(request.mirror_axes))
            if problem is not None:
                states.append(None)
                errors.append(problem)
                continue
            padded, unpad = pad_to_patch(np.asarray(request.volume, dtype=np.float32), patch_size)
            spatial = padded.shape[1:]
            states.append(
                _DeviceCase(
                    padded=torch.from_numpy(np.ascontiguousarray(padded)).to(device),
                    unpad=unpad,
                    logit_sum=torch.zeros((num_classes, *spatial), device=device),
                    weight_sum=torch.zeros(spatial, device=device),
                )
            )
            errors.append(None)
        live = {i: state for i, state in enumerate(states) if state is not None}
        order = list(live)
        jobs = [
            TileJob(case=order[job.case], window=job.window, flips=job.flips)
            for job in plan_tile_jobs(
                [tuple(state.padded.shape[1:]) for state in live.values()],
                patch_size,
                step,
                [flips_per_case[i] for i in order],
            )
        ]
        result = CrossCaseResult(outputs=[None] * len(cases), errors=errors)
        for batch in pack_batches(jobs, batch_size):
            batch = [job for job in batch if live[job.case].error is None]
            if not batch:
                continue
            involved = sorted({job.case for job in batch})
            if len(involved) > 1:
                result.mixed_batches += 1
            try:
                _run_jobs(batch, live, predict, weights, num_classes, patch_size, result)
            except (ValueError, RuntimeError, FloatingPointError) as exc:
                if len(involved) == 1:
                    _fail(live[involved[0]], involved[0], exc)
                    continue
                logger.warning("a mixed device batch failed (%s); re-running case by case", exc)
                for case in involved:
                    own = [job for job in batch if job.case == case]
                    try:
                        _run_jobs(own, live, predict, weights, num_classes, patch_size, result)
                    except (ValueError, RuntimeError, FloatingPointError) as case_exc:
                        _fail(live[case], case, case_exc)
        for index, state in live.items():
            if state.error is not None:
                result.errors[index] = state.error
                continue
            averaged = (state.logit_sum / state.weight_sum)[state.unpad]
            result.outputs[index] = SlidingWindowOutput(
                logits=averaged.cpu().numpy().astype(np.float32, copy=False), disagreement=None
            )
            states[index] = None  # the device memory of a finished case is released now
    return result


def _fail(state: _DeviceCase, case: int, exc: BaseException) -> None:
    state.error = f"network failed on this case's tiles: {exc}"
    logger.warning("case %d of a device cross-case batch failed: %s", case, exc)


def _run_jobs(
    jobs: Sequence[TileJob],
    live: dict[int, _DeviceCase],
    predict: DeviceTilePredictor,
    weights: torch.Tensor,
    num_classes: int,
    patch_size: tuple[int, int, int],
    result: CrossCaseResult,
) -> None:
    """One network call for ``jobs`` on the device; accumulate each tile into its case.

    Raises:
        ValueError: the network returned logits of the wrong shape.
        FloatingPointError: the network returned NaN or infinite logits (nothing accumulated).
    """
    images: list[torch.Tensor] = []
    for job in jobs:
        tile = live[job.case].padded[(slice(None), *job.window)]
        images.extend(torch.flip(tile, dims=_flip_dims(f)) if f else tile for f in job.flips)
    batch = torch.stack(images).contiguous()
    logits = predict(batch).float()
    expected = (len(batch), num_classes, *patch_size)
    if tuple(logits.shape) != expected:
        raise ValueError(f"network returned shape {tuple(logits.shape)}, expected {expected}")
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("network returned NaN or infinite logits")
    result.batch_sizes.append(len(batch))
    offset = 0
    for job in jobs:
        state = live[job.case]
        tile_logits = torch.zeros((num_classes, *patch_size), device=logits.device)
        for flip in job.flips:
            out = logits[offset]
            offset += 1
            tile_logits += torch.flip(out, dims=_flip_dims(flip)) if flip else out
        tile_logits /= len(job.flips)
        state.logit_sum[(slice(None), *job.window)] += tile_logits * weights
        state.weight_sum[job.window] += weights
