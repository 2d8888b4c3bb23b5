"""The reduced-precision guard: an fp16/bf16/int8 engine must agree with fp32 before it serves.

nnU-Net users report TensorRT fp16 engines that return all-background output (MIC-DKFZ/nnUNet
issue 2874): overflow in fp16 activations, silently. So every reduced-precision engine is run on
a reference tile when it is built and compared with the same network in fp32; if the argmax
agreement is out of bounds (or the output is not finite) the runner rebuilds the engine in fp32
and says so in every response.

fp16 (TensorRT, torch) is also held to a largest probability difference: overflow shows there
first. bf16 and int8 (OpenVINO) are admitted by decisions, as issue 21 states them: the
reference tile's agreement here, and the model folder's held-out record
(``precisions.json``: labels of held-out cases within ``1 - Dice`` of fp32 per region,
:func:`admit_by_held_out_record`). Their largest |dp| is reported, not decisive: it is one
voxel's maximum over the tile's 262k, and near a tie between two classes bf16 moves
probabilities by 0.1-0.2 whether or not the decision flips; flips are what the agreement counts.
Measured on the default model (OpenVINO bf16, AMX): 161 voxels flip (agreement 0.99939), 48 move
by > 0.1, the largest by 0.217 where ET 0.58 / SNFH 0.35 became 0.36 / 0.56; held-out
``1 - Dice`` <= 0.0007.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter

from runners.sliding_window import activate
from schemas.model_spec import BRATS_REGIONS, ModelSpec
from schemas.precision_record import PrecisionRecord

REFERENCE_TILE_SEED = 20231
HELD_OUT_PRECISIONS = ("bf16", "int8")
"""Precisions admitted by decisions (reference tile + held-out record), |dp| only reported."""
RECORD_COMMAND = (
    "cerebrascan pipeline precisions --model-dir {folder} --cases <held-out case folders>"
)
"""The command that measures a model folder's held-out record (named in refusals)."""


@dataclass(frozen=True)
class PrecisionDecision:
    """What the guard found and which precision the engine serves with."""

    requested: str
    used: str
    argmax_agreement: float | None = None
    max_probability_difference: float | None = None
    note: str | None = None
    """Why the requested precision was not used (None when it was)."""
    held_out_dice_change: dict[str, float] | None = None
    """bf16 / int8: the held-out record's worst ``1 - Dice`` per region (None otherwise)."""


def reference_tile(
    spec: ModelSpec, batch: int = 1, seed: int = REFERENCE_TILE_SEED
) -> npt.NDArray[np.float32]:
    """A deterministic brain-like tile ``(batch, C, *patch)`` for the guard.

    Smooth structure (Gaussian-filtered noise, z-scored per channel, as the preprocessing leaves
    real images) with a bright ellipsoid, so that the network produces several classes rather
    than background only; fp16 overflow shows on such inputs as it does on real ones.

    Args:
        spec: the network's modalities and patch size.
        batch: copies of the tile.
        seed: the noise's seed; the guard uses ``REFERENCE_TILE_SEED``, other seeds give tiles
            of the same kind that the guard never sees (experiments/int8_accuracy_control.py).
    """
    rng = np.random.default_rng(seed)
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
    probability_difference_decides: bool = True,
) -> PrecisionDecision:
    """Decide whether the candidate (reduced precision) may serve on the reference tile.

    Args:
        reference_logits: fp32 logits of the reference tile, ``(B, K, *patch)``.
        candidate_logits: the reduced-precision engine's logits of the same tile.
        spec: the network's output contract (softmax labels or sigmoid regions).
        requested: the precision asked for (``fp16`` / ``bf16``).
        min_agreement: least fraction of voxels whose decision must match fp32.
        max_probability_difference: largest |p_candidate - p_fp32| allowed.
        probability_difference_decides: False: the difference is measured and reported but
            does not refuse (bf16 / int8, admitted by decisions; see the module docstring).

    Returns:
        ``used == requested`` when the bounds hold and the output is finite, else
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
    if probability_difference_decides and difference > max_probability_difference:
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


def admit_by_held_out_record(
    record: PrecisionRecord | None,
    *,
    record_problem: str | None,
    onnx_sha256: str,
    precision: str,
    max_dice_change: float,
    model_folder: str,
    network_sha256: str | None = None,
) -> tuple[str | None, dict[str, float] | None]:
    """Whether a model folder's held-out record admits ``precision`` (issue 21's second half).

    The record must have been measured on this ONNX file (else it counts as absent), hold an
    entry for ``precision`` (measured on the same separate network file, e.g. the int8 IR,
    when the entry names one) that passed when it was made, and that entry's worst
    ``1 - Dice`` against fp32 must be at most ``max_dice_change`` in every BraTS region (the
    setting: a tighter bound than the record's is honoured).

    Args:
        record: the folder's record, or None.
        record_problem: why ``record`` is None (absent, invalid), for the note.
        onnx_sha256: SHA-256 of the ONNX file being served.
        precision: the reduced precision asked for.
        max_dice_change: the bound (``runner.precision_guard_max_dice_change``).
        model_folder: the folder, named in the note with the command that makes the record.
        network_sha256: SHA-256 of the entry's separate network weights as found now (None:
            the entry names none, or the file is missing).

    Returns:
        ``(note, dice_change)``: ``note`` None when admitted, else why not (ending with
        "serving fp32" and, when the record is missing or stale, the command to make it);
        ``dice_change`` the entry's figures when there is an entry.
    """
    remedy = "make it with `" + RECORD_COMMAND.format(folder=model_folder) + "`"
    if record is None:
        return (
            f"{precision} has no held-out record for this model ({record_problem}); "
            f"serving fp32; {remedy}",
            None,
        )
    if record.onnx_sha256 != onnx_sha256:
        return (
            f"{precision}: the held-out record in {model_folder} was measured on another "
            f"model.onnx (sha256 {record.onnx_sha256[:12]}..., served {onnx_sha256[:12]}...), "
            f"so it counts as absent; serving fp32; {remedy}",
            None,
        )
    entry = record.precisions.get(precision)
    if entry is None:
        known = ", ".join(record.precisions) or "none"
        return (
            f"{precision} is not in the held-out record of {model_folder} (it has: {known}); "
            f"serving fp32; {remedy}",
            None,
        )
    if entry.model is not None and entry.model_sha256 != network_sha256:
        return (
            f"{precision}: the held-out record was measured on another {entry.model} than the "
            f"one in {model_folder} (or it is missing); serving fp32; {remedy}",
            None,
        )
    missing = [region for region in BRATS_REGIONS if region not in entry.dice_change]
    if missing:
        reason = (entry.note or "").removesuffix("; serving fp32") or (
            f"no held-out Dice change for {', '.join(missing)}"
        )
        return (
            f"{precision} did not pass its held-out check when the record was made ({reason}); "
            "serving fp32",
            dict(entry.dice_change) or None,
        )
    failed = {
        r: c for r, c in entry.dice_change.items() if r in BRATS_REGIONS and c > max_dice_change
    }
    if failed:
        worst = ", ".join(f"{region} {change:.4f}" for region, change in failed.items())
        return (
            f"{precision} changed held-out labels beyond Dice {max_dice_change} ({worst} over "
            f"{record.held_out.cases} cases, {entry.engine} on {entry.cpu or 'an unnamed CPU'}); "
            "serving fp32",
            dict(entry.dice_change),
        )
    if not entry.passed:
        return (
            f"{precision} did not pass its held-out check when the record was made "
            f"({(entry.note or 'no reason recorded').removesuffix('; serving fp32')}); "
            "serving fp32",
            dict(entry.dice_change),
        )
    return None, dict(entry.dice_change)
