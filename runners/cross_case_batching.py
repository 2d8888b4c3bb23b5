"""Sliding-window inference over several volumes at once, with tile batches that mix cases.

Pure numpy, like :mod:`runners.sliding_window`, whose tile placement, Gaussian weighting and
mirror flips it reuses. Each case is tiled exactly as :func:`sliding_window_predict` tiles it and
its tiles are accumulated in the same order with the same arithmetic, so a case's logits do not
depend on which other cases shared its batches (as long as the network's output for a tile does
not depend on its batch neighbours).

Packing order: the cases' tile lists are concatenated, not interleaved round-robin. Every batch
but the last is full either way; concatenation lets the first case finish first instead of all
cases finishing together at the end, and a case's tiles stay contiguous in memory order.

One bad case must not fail the others: volumes are checked before tiling (shape, channels,
finite values), and when the network fails on a mixed batch the batch is re-run one case at a
time, so only the case whose tiles fail is marked failed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from runners.sliding_window import (
    FloatArray,
    SlidingWindowOutput,
    flip_disagreement,
    gaussian_importance_map,
    mirror_combinations,
    pad_to_patch,
    tile_starts,
)

logger = logging.getLogger(__name__)

Window = tuple[slice, slice, slice]
TilePredictor = Callable[[FloatArray], FloatArray]


class CaseFailedError(RuntimeError):
    """One case of a cross-case batch could not be segmented (the others were)."""


@dataclass(frozen=True)
class CaseRequest:
    """One preprocessed volume and how it is to be predicted.

    Attributes:
        volume: ``(channels, x, y, z)`` network input (any float dtype; computed in float32).
        mirror_axes: spatial axes to mirror for test-time augmentation; empty for none.
        return_disagreement: also compute the mirror flips' disagreement (needs mirror axes).
    """

    volume: npt.NDArray[np.floating]
    mirror_axes: tuple[int, ...] = ()
    return_disagreement: bool = False


@dataclass(frozen=True)
class TileJob:
    """One tile of one case; all its mirror flips travel in the same network call."""

    case: int
    window: Window
    flips: tuple[tuple[int, ...], ...]

    @property
    def images(self) -> int:
        """Tile images this job puts into a batch (one per flip)."""
        return len(self.flips)


@dataclass
class _CaseState:
    padded: FloatArray
    unpad: tuple[slice, ...]
    logit_sum: FloatArray
    weight_sum: FloatArray
    disagreement_sum: FloatArray | None
    error: str | None = None
    tiles_done: int = 0
    tiles_total: int = 0


@dataclass
class CrossCaseResult:
    """Per case, in request order: the output, or why that case failed."""

    outputs: list[SlidingWindowOutput | None]
    errors: list[str | None]
    batch_sizes: list[int] = field(default_factory=list)
    """Tile images per network call, in call order."""
    mixed_batches: int = 0
    """Network calls whose tiles came from more than one case."""


def validate_case_volume(volume: npt.NDArray[np.floating], channels: int) -> str | None:
    """Why ``volume`` cannot be segmented, or None if it can.

    Args:
        volume: the preprocessed input.
        channels: input channels of the network.
    """
    if volume.ndim != 4:
        return f"volume must be 4-D (channels, x, y, z), got shape {tuple(volume.shape)}"
    if volume.shape[0] != channels:
        return f"volume has {volume.shape[0]} channels, the network takes {channels}"
    if not np.issubdtype(volume.dtype, np.floating):
        return f"volume dtype must be floating point, got {volume.dtype}"
    if min(volume.shape[1:]) < 1:
        return f"volume has an empty axis: shape {tuple(volume.shape)}"
    if not np.isfinite(volume).all():
        return "volume contains NaN or infinite values"
    return None


def plan_tile_jobs(
    spatial_shapes: Sequence[tuple[int, ...]],
    patch_size: tuple[int, int, int],
    step: float,
    flips_per_case: Sequence[Sequence[tuple[int, ...]]],
) -> list[TileJob]:
    """Every tile of every case, case after case, each case in :mod:`sliding_window` order.

    Args:
        spatial_shapes: padded spatial shape of each case.
        patch_size: network tile size.
        step: tile step as a fraction of the patch.
        flips_per_case: the mirror flips of each case (the identity first).
    """
    jobs: list[TileJob] = []
    for case, (shape, flips) in enumerate(zip(spatial_shapes, flips_per_case, strict=True)):
        starts = tile_starts(shape, patch_size, step)
        for sx, sy, sz in itertools.product(*starts):
            window = (
                slice(sx, sx + patch_size[0]),
                slice(sy, sy + patch_size[1]),
                slice(sz, sz + patch_size[2]),
            )
            jobs.append(TileJob(case=case, window=window, flips=tuple(flips)))
    return jobs


def pack_batches(jobs: Sequence[TileJob], batch_size: int) -> list[list[TileJob]]:
    """Consecutive jobs grouped so each network call holds at most ``batch_size`` tile images.

    A job is never split (all flips of a tile go together); a job with more flips than
    ``batch_size`` gets a call of its own, as :func:`sliding_window_predict` does.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[TileJob]] = []
    current: list[TileJob] = []
    used = 0
    for job in jobs:
        if current and used + job.images > batch_size:
            batches.append(current)
            current, used = [], 0
        current.append(job)
        used += job.images
    if current:
        batches.append(current)
    return batches


def _flip_axes(flip: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(axis + 1 for axis in flip)


def _tile_images(state: _CaseState, job: TileJob) -> list[FloatArray]:
    tile = state.padded[(slice(None), *job.window)]
    return [np.flip(tile, axis=_flip_axes(flip)) if flip else tile for flip in job.flips]


def cross_case_sliding_window(
    cases: Sequence[CaseRequest],
    predict: TilePredictor,
    *,
    patch_size: tuple[int, int, int],
    num_classes: int,
    channels: int,
    step: float = 0.5,
    batch_size: int = 2,
) -> CrossCaseResult:
    """Gaussian-weighted tile logits of several cases, their tiles sharing network calls.

    Args:
        cases: the volumes and their options.
        predict: maps ``(B, channels, *patch)`` float32 to ``(B, num_classes, *patch)`` logits.
        patch_size: network tile size.
        num_classes: logit channels.
        channels: input channels of the network (a case with another count fails alone).
        step: tile step as a fraction of the patch.
        batch_size: most tile images per ``predict`` call (all flips of a tile go together;
            the same meaning as in :func:`sliding_window_predict`).

    Returns:
        Per case, its :class:`SlidingWindowOutput` (the same as
        :func:`sliding_window_predict` gives for that case alone) or the reason it failed.
    """
    weights = gaussian_importance_map(tuple(patch_size))
    states: list[_CaseState | None] = []
    errors: list[str | None] = []
    flips_per_case: list[list[tuple[int, ...]]] = []
    for request in cases:
        problem = validate_case_volume(request.volume, channels)
        flips = mirror_combinations(request.mirror_axes)
        flips_per_case.append(flips)
        if problem is not None:
            states.append(None)
            errors.append(problem)
            continue
        volume = np.asarray(request.volume, dtype=np.float32)
        padded, unpad = pad_to_patch(volume, patch_size)
        spatial = padded.shape[1:]
        with_disagreement = request.return_disagreement and len(flips) > 1
        states.append(
            _CaseState(
                padded=padded,
                unpad=unpad,
                logit_sum=np.zeros((num_classes, *spatial), dtype=np.float32),
                weight_sum=np.zeros(spatial, dtype=np.float32),
                disagreement_sum=np.zeros(spatial, dtype=np.float32) if with_disagreement else None,
            )
        )
        errors.append(None)
    live = {i: state for i, state in enumerate(states) if state is not None}
    order = list(live)
    jobs = [
        TileJob(case=order[job.case], window=job.window, flips=job.flips)
        for job in plan_tile_jobs(
            [state.padded.shape[1:] for state in live.values()],
            patch_size,
            step,
            [flips_per_case[i] for i in order],
        )
    ]
    for job in jobs:
        live[job.case].tiles_total += 1
    result = CrossCaseResult(outputs=[None] * len(cases), errors=errors)
    for batch in pack_batches(jobs, batch_size):
        batch = [job for job in batch if live[job.case].error is None]
        if not batch:
            continue
        if len({job.case for job in batch}) > 1:
            result.mixed_batches += 1
        try:
            _run_jobs(batch, states, predict, weights, num_classes, patch_size, result)
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            if len({job.case for job in batch}) == 1:
                _fail(states, batch[0].case, exc)
                continue
            logger.warning("a mixed tile batch failed (%s); re-running it case by case", exc)
            for case in sorted({job.case for job in batch}):
                own = [job for job in batch if job.case == case]
                try:
                    _run_jobs(own, states, predict, weights, num_classes, patch_size, result)
                except (ValueError, RuntimeError, FloatingPointError) as case_exc:
                    _fail(states, case, case_exc)
    for index, state in enumerate(states):
        if state is None:
            continue
        if state.error is not None:
            result.errors[index] = state.error
            continue
        averaged: FloatArray = (state.logit_sum / state.weight_sum).astype(np.float32, copy=False)
        disagreement: FloatArray | None = None
        if state.disagreement_sum is not None:
            state.disagreement_sum /= state.weight_sum
            disagreement = state.disagreement_sum[state.unpad[1:]]
        result.outputs[index] = SlidingWindowOutput(
            logits=averaged[state.unpad], disagreement=disagreement
        )
        states[index] = None  # free the accumulators as soon as the case is done
    return result


def _state(states: list[_CaseState | None], case: int) -> _CaseState:
    state = states[case]
    if state is None:
        raise AssertionError(f"case {case} has no tiling state")
    return state


def _fail(states: list[_CaseState | None], case: int, exc: BaseException) -> None:
    state = _state(states, case)
    state.error = f"network failed on this case's tiles: {exc}"
    logger.warning("case %d of a cross-case batch failed: %s", case, exc)


def _run_jobs(
    jobs: Sequence[TileJob],
    states: list[_CaseState | None],
    predict: TilePredictor,
    weights: FloatArray,
    num_classes: int,
    patch_size: tuple[int, int, int],
    result: CrossCaseResult,
) -> None:
    """One network call for ``jobs``; accumulate each tile into its case.

    Raises:
        ValueError: the network returned logits of the wrong shape or non-finite logits for a
            case (nothing of that call is accumulated then).
    """
    images = [image for job in jobs for image in _tile_images(_state(states, job.case), job)]
    batch = np.ascontiguousarray(np.stack(images).astype(np.float32, copy=False))
    logits = np.asarray(predict(batch), dtype=np.float32)
    expected = (len(batch), num_classes, *patch_size)
    if logits.shape != expected:
        raise ValueError(f"network returned shape {logits.shape}, expected {expected}")
    if not np.isfinite(logits).all():
        raise FloatingPointError("network returned NaN or infinite logits")
    result.batch_sizes.append(len(batch))
    offset = 0
    for job in jobs:
        state = _state(states, job.case)
        tile_logits = np.zeros((num_classes, *patch_size), dtype=np.float32)
        unflipped: list[FloatArray] = []
        for flip in job.flips:
            out = logits[offset]
            offset += 1
            restored = np.flip(out, axis=_flip_axes(flip)) if flip else out
            tile_logits += restored
            if state.disagreement_sum is not None:
                unflipped.append(restored)
        tile_logits /= len(job.flips)
        state.logit_sum[(slice(None), *job.window)] += tile_logits * weights
        state.weight_sum[job.window] += weights
        if state.disagreement_sum is not None:
            state.disagreement_sum[job.window] += flip_disagreement(unflipped) * weights
        state.tiles_done += 1
