"""The reduced-precision guard: an fp16/bf16 engine must agree with fp32 before it serves.

nnU-Net users report TensorRT fp16 engines that return all-background output (MIC-DKFZ/nnUNet
issue 2874): overflow in fp16 activations, silently. So every reduced-precision engine is run on
a reference tile when it is built and compared with the same network in fp32; if the argmax
agreement or the largest probability difference is out of bounds (or the output is not finite)
the runner rebuilds the engine in fp32 and says so in every response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter

from runners.sliding_window import activate
from schemas.model_spec import BRATS_REGIONS, ModelSpec

REFERENCE_TILE_SEED = 20231


@dataclass(frozen=True)
class PrecisionDecision:
    """What the guard found and which precision the engine serves with."""

    requested: str
    used: str
    argmax_agreement: float | None = None
    max_probability_difference: float | None = None
    note: str | None = None
    """Why the requested precision was not used (None when it was)."""


def reference_tile(spec: ModelSpec, batch: int = 1) -> npt.NDArray[np.float32]:
    """A deterministic brain-like tile ``(batch, C, *patch)`` for the guard.

    Smooth structure (Gaussian-filtered noise, z-scored per channel, as the preprocessing leaves
    real images) with a bright ellipsoid, so that the network produces several classes rather
    than background only; fp16 overflow shows on such inputs as it does on real ones.
    """
    rng = np.random.default_rng(REFERENCE_TILE_SEED)
    channels = len(spec.modalities)
    patch = spec.patch_size
    tile = gaussian_filter(rng.standard_normal((channels, *patch)), sigma=(0, 2, 2, 2))
    grid = np.meshgrid(*[np.linspace(-1, 1, p) for p in patch], indexing="ij")
    lesion = (grid[0] / 0.5) ** 2 + (grid[1] / 0.4) ** 2 + (grid[2] / 0.45) ** 2 < 1
    tile[:, lesion] += np.linspace(1.0, 3.0, channels)[:, None]
    tile = (tile - tile.mean(axis=(1, 2, 3), keepdims=True)) / tile.std(
        axis=(1, 2, 3), keepdims=True
    )
    return np.repeat(tile[None].astype(np.float32), batch, axis=0)


def _decision_map(probabilities: npt.NDArray[np.float32], spec: ModelSpec) -> npt.NDArray[np.int_]:
    if spec.output_kind == "sigmoid_regions":
        # Regions: compare every region's mask, packed into one integer per voxel.
        masks = (probabilities > 0.5).astype(np.int_)
        powers = (2 ** np.arange(masks.shape[1])).reshape(1, -1, *([1] * (masks.ndim - 2)))
        return np.asarray((masks * powers).sum(axis=1))
    return np.asarray(probabilities.argmax(axis=1))


def compare_precisions(
    reference_logits: npt.NDArray[np.float32],
    candidate_logits: npt.NDArray[np.float32],
    spec: ModelSpec,
    *,
    requested: str,
    min_agreement: float,
    max_probability_difference: float,
) -> PrecisionDecision:
    """Decide whether the candidate (reduced precision) may serve.

    Args:
        reference_logits: fp32 logits of the reference tile, ``(B, K, *patch)``.
        candidate_logits: the reduced-precision engine's logits of the same tile.
        spec: the network's output contract (softmax labels or sigmoid regions).
        requested: the precision asked for (``fp16`` / ``bf16``).
        min_agreement: least fraction of voxels whose decision must match fp32.
        max_probability_difference: largest |p_candidate - p_fp32| allowed.

    Returns:
        ``used == requested`` when both bounds hold and the output is finite, else
        ``used == "fp32"`` with the reason in ``note``.
    """
    candidate = np.asarray(candidate_logits, dtype=np.float32)
    if candidate.shape != reference_logits.shape:
        return PrecisionDecision(
            requested,
            "fp32",
            note=f"{requested} engine returned shape {candidate.shape}, fp32 "
            f"{reference_logits.shape}; serving fp32",
        )
    if not np.isfinite(candidate).all():
        bad = int((~np.isfinite(candidate)).sum())
        return PrecisionDecision(
            requested,
            "fp32",
            note=f"{requested} engine returned {bad} non-finite logits on the reference tile; "
            "serving fp32",
        )
    reference_probabilities = activate(
        reference_logits.astype(np.float32), spec.output_kind, axis=1
    )
    candidate_probabilities = activate(candidate, spec.output_kind, axis=1)
    agreement = float(
        (
            _decision_map(reference_probabilities, spec)
            == _decision_map(candidate_probabilities, spec)
        ).mean()
    )
    difference = float(np.abs(reference_probabilities - candidate_probabilities).max())
    failures = []
    if agreement < min_agreement:
        failures.append(f"decision agreement {agreement:.4f} < {min_agreement}")
    if difference > max_probability_difference:
        failures.append(f"max |dp| {difference:.3g} > {max_probability_difference}")
    if failures:
        return PrecisionDecision(
            requested,
            "fp32",
            agreement,
            difference,
            note=f"{requested} disagreed with fp32 on the reference tile "
            f"({'; '.join(failures)}); serving fp32",
        )
    return PrecisionDecision(requested, requested, agreement, difference)


@dataclass(frozen=True)
class HeldOutCheck:
    """The second half of the guard: labels of held-out cases, reduced precision vs fp32."""

    requested: str
    passed: bool
    dice_changes: dict[str, float]
    """Per region, the worst ``1 - Dice(candidate, fp32)`` over the cases."""
    cases: int
    note: str | None = None
    """Why the requested precision was refused (None when it passed)."""


def region_dice(
    reference: npt.NDArray[np.integer], candidate: npt.NDArray[np.integer], labels: Sequence[int]
) -> float:
    """Dice of the region ``labels`` between two label maps (1 when both are empty)."""
    a = np.isin(reference, labels)
    b = np.isin(candidate, labels)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_held_out_labels(
    reference_labels: Sequence[npt.NDArray[np.integer]],
    candidate_labels: Sequence[npt.NDArray[np.integer]],
    *,
    requested: str,
    max_dice_change: float,
    regions: Mapping[str, Sequence[int]] = BRATS_REGIONS,
) -> HeldOutCheck:
    """Whether a reduced precision keeps held-out cases' labels: ``1 - Dice`` against fp32 at
    most ``max_dice_change`` in every region of every case (issue 21's bound: 0.005).

    Args:
        reference_labels: fp32 label maps, one per held-out case.
        candidate_labels: the reduced precision's label maps of the same cases.
        requested: the precision asked for (for the note).
        max_dice_change: largest ``1 - Dice`` allowed per region and case.
        regions: region name to the labels it covers (BraTS WT / TC / ET by default).

    Raises:
        ValueError: no cases, a different number of cases, or a case whose shapes differ.
    """
    if not reference_labels or len(reference_labels) != len(candidate_labels):
        raise ValueError(
            f"need the same non-zero number of fp32 and {requested} label maps, got "
            f"{len(reference_labels)} and {len(candidate_labels)}"
        )
    changes = dict.fromkeys(regions, 0.0)
    for index, (reference, candidate) in enumerate(zip(reference_labels, candidate_labels)):
        if reference.shape != candidate.shape:
            raise ValueError(
                f"held-out case {index}: fp32 labels {reference.shape}, {requested} "
                f"labels {candidate.shape}"
            )
        for name, labels in regions.items():
            change = 1.0 - region_dice(reference, candidate, labels)
            changes[name] = max(changes[name], change)
    failed = {name: change for name, change in changes.items() if change > max_dice_change}
    note = None
    if failed:
        worst = ", ".join(f"{name} {change:.4f}" for name, change in failed.items())
        note = (
            f"{requested} changed held-out labels beyond Dice {max_dice_change} "
            f"({worst} over {len(reference_labels)} cases); serving fp32"
        )
    return HeldOutCheck(requested, not failed, changes, len(reference_labels), note)
