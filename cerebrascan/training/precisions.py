"""The held-out check of a model folder's reduced precisions: ``precisions.json`` and the card.

``cerebrascan pipeline precisions`` segments held-out cases with fp32 (ONNX Runtime on the CPU,
the served fp32 path) and with each reduced precision this CPU offers through OpenVINO (bf16 on
AVX-512 BF16 / AMX; int8 when the folder holds the NNCF-quantised ``model.int8.xml``), compares
the labels (:func:`runners.precision_guard.compare_held_out_labels`: worst ``1 - Dice`` per
region against fp32) and against the cases' true labels, and records them with the reference
tile's figures. A served bf16 / int8 needs that record (:mod:`runners.fp32_reference`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cerebrascan.inputs.case_folder import read_case, read_labels
from cerebrascan.segmentation import segment_study
from cerebrascan.training.params import EvaluateParams
from runners.engine_cache import file_digest
from runners.onnx_runner import OnnxSegmentationRunner
from runners.precision_guard import (
    HELD_OUT_PRECISIONS,
    compare_held_out_labels,
    region_dice,
)
from runners.precision_record import separate_network_digest
from runners.settings import RunnerSettings
from schemas.model_spec import BRATS_REGIONS, ModelSpec
from schemas.precision_record import (
    Fp32Figures,
    HeldOutSet,
    PrecisionEntry,
    PrecisionRecord,
    ReferenceTileFigures,
)

logger = logging.getLogger(__name__)

INT8_MODEL_FILE = "model.int8.xml"
INT8_CALIBRATION_FILE = "int8_calibration.json"
CARD_SECTION = "## Reduced precisions"
MEASURING_MIN_AGREEMENT = 1e-6
"""The tool serves the candidate whatever the tile's agreement, to measure its labels too."""


@dataclass(frozen=True)
class HeldOutCases:
    """The held-out cases a record is measured on."""

    folders: Sequence[Path]
    seed: int | None
    source: str


def offered_precisions(model_dir: Path, capabilities: Sequence[str]) -> list[str]:
    """The reduced precisions this CPU and folder offer: bf16 with the CPU's BF16, int8 when
    the folder holds ``model.int8.xml`` and its ``.bin`` (and the CPU lists INT8)."""
    offered = []
    if "BF16" in capabilities:
        offered.append("bf16")
    if "INT8" in capabilities and separate_network_digest(model_dir, INT8_MODEL_FILE):
        offered.append("int8")
    return offered


def mean_region_dice(
    truths: Sequence[npt.NDArray[np.integer]], labels: Sequence[npt.NDArray[np.integer]]
) -> dict[str, float]:
    """Mean Dice per BraTS region of ``labels`` against ``truths`` over the cases."""
    return {
        region: float(np.mean([region_dice(t, x, values) for t, x in zip(truths, labels)]))
        for region, values in BRATS_REGIONS.items()
    }


def _segment_all(
    runner: Any, folders: Sequence[Path], evaluate: EvaluateParams
) -> list[npt.NDArray[np.uint8]]:
    return [
        segment_study(
            read_case(folder),
            runner,
            mirror_tta=evaluate.mirror_tta,
            min_component_ml=evaluate.min_component_ml,
        ).labels
        for folder in folders
    ]


def _calibration_summary(model_dir: Path) -> dict[str, Any] | None:
    """The quantisation's calibration record, tile positions left in its own file."""
    path = model_dir / INT8_CALIBRATION_FILE
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    calibration = dict(record.get("calibration", {}))
    if "positions" in calibration:
        calibration["positions"] = f"{len(calibration['positions'])} tiles: see {path.name}"
    return {**record, "calibration": calibration}


def measure_precision(
    model_dir: Path,
    spec: ModelSpec,
    precision: str,
    cases: HeldOutCases,
    fp32_labels: Sequence[npt.NDArray[np.uint8]],
    truths: Sequence[npt.NDArray[np.uint8]],
    *,
    evaluate: EvaluateParams,
    max_dice_change: float,
    engine_cache_dir: Path,
) -> PrecisionEntry:
    """One reduced precision on OpenVINO: reference tile, held-out labels vs fp32 and truth.

    The engine is built to serve the candidate whatever the reference tile says (agreement
    bound ~0, no record needed: this makes the record), so that the held-out labels are
    measured even for a precision the tile refuses; the entry passes only if the tile's
    agreement meets ``RunnerSettings().precision_guard_min_agreement`` and the held-out check
    passes. Non-finite logits (or an engine error) leave no labels: the entry fails with that
    reason.

    Raises:
        RunnerConfigError: the precision cannot run here (CPU, package or int8 IR missing).
    """
    from runners.openvino_runner import OpenVINOSegmentationRunner

    min_agreement = RunnerSettings().precision_guard_min_agreement
    settings = RunnerSettings(
        engine="openvino",
        precision=precision,  # type: ignore[arg-type]
        tile_step=evaluate.tile_step,
        precision_guard_min_agreement=MEASURING_MIN_AGREEMENT,
        precision_guard_max_dice_change=max_dice_change,
    )
    runner = OpenVINOSegmentationRunner(
        model_dir / "model.onnx", spec, settings, engine_cache_dir, require_held_out_record=False
    )
    decision = runner.decision
    entry: dict[str, Any] = {
        "engine": "openvino",
        "passed": False,
        "max_dice_change": max_dice_change,
        "reference_tile": ReferenceTileFigures(
            agreement=decision.argmax_agreement,
            max_probability_difference=decision.max_probability_difference,
        ),
        "cpu": runner.cpu_name,
        "openvino": str(runner.ov.__version__).split("-")[0],
    }
    if precision == "int8":
        entry["model"] = INT8_MODEL_FILE
        entry["model_sha256"] = separate_network_digest(model_dir, INT8_MODEL_FILE)
        entry["calibration"] = _calibration_summary(model_dir)
    if runner.precision != precision:
        entry["note"] = decision.note
        return PrecisionEntry(**entry)
    labels = _segment_all(runner, cases.folders, evaluate)
    check = compare_held_out_labels(
        fp32_labels, labels, requested=precision, max_dice_change=max_dice_change
    )
    agreement = decision.argmax_agreement or 0.0
    reasons = []
    if agreement < min_agreement:
        reasons.append(
            f"{precision} disagreed with fp32 on the reference tile (decision agreement "
            f"{agreement:.4f} < {min_agreement})"
        )
    if check.note:
        reasons.append(check.note.removesuffix("; serving fp32"))
    entry.update(
        passed=not reasons,
        dice_change=check.dice_changes,
        dice_vs_truth=mean_region_dice(truths, labels),
        note="; ".join(reasons) + "; serving fp32" if reasons else None,
    )
    return PrecisionEntry(**entry)


def measure_precisions(
    model_dir: Path,
    cases: HeldOutCases,
    *,
    evaluate: EvaluateParams,
    max_dice_change: float,
    engine_cache_dir: Path,
    precisions: Sequence[str] | None = None,
    previous: PrecisionRecord | None = None,
) -> PrecisionRecord:
    """The held-out record of ``model_dir``'s reduced precisions.

    Args:
        model_dir: a model folder (``model.onnx``, ``model_spec.json``; ``model.int8.xml``).
        cases: held-out case folders with their true labels (``-seg``).
        evaluate: inference settings (tile step, TTA, small-component removal) as evaluated.
        max_dice_change: the bound each precision is checked against.
        engine_cache_dir: OpenVINO's compiled-model cache.
        precisions: which to measure; None: every one this CPU and folder offer.
        previous: the folder's earlier record; its entries for precisions not measured now
            are kept when it was made on the same network and cases.

    Raises:
        ValueError: no cases, a precision that is not a reduced one, or int8 asked for
            without the folder's ``model.int8.xml``.
        RunnerConfigError: a precision named in ``precisions`` cannot run here.
    """
    if not cases.folders:
        raise ValueError("no held-out case folders to measure precisions on")
    unknown = sorted(set(precisions or ()) - set(HELD_OUT_PRECISIONS))
    if unknown:
        raise ValueError(f"precisions {unknown} are not among {list(HELD_OUT_PRECISIONS)}")
    if "int8" in (precisions or ()) and not separate_network_digest(model_dir, INT8_MODEL_FILE):
        raise ValueError(
            f"int8 needs {model_dir / INT8_MODEL_FILE} and its .bin, which are missing: make "
            f"them with `cerebrascan pipeline quantize --model-dir {model_dir}`"
        )
    spec = ModelSpec.model_validate_json((model_dir / "model_spec.json").read_text())
    if precisions is None:
        from runners.openvino_runner import import_openvino

        capabilities = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        precisions = offered_precisions(model_dir, [str(c) for c in capabilities])
    truths = [read_labels(folder) for folder in cases.folders]
    reference = OnnxSegmentationRunner(
        model_dir / "model.onnx", spec, RunnerSettings(tile_step=evaluate.tile_step)
    )
    fp32_labels = _segment_all(reference, cases.folders, evaluate)
    held_out = HeldOutSet(cases=len(cases.folders), seed=cases.seed, source=cases.source)
    onnx_sha256 = file_digest(model_dir / "model.onnx")
    entries: dict[str, PrecisionEntry] = {}
    if (
        previous is not None
        and previous.onnx_sha256 == onnx_sha256
        and previous.held_out == held_out
    ):
        entries.update(previous.precisions)
    for precision in precisions:
        entries[precision] = measure_precision(
            model_dir,
            spec,
            precision,
            cases,
            fp32_labels,
            truths,
            evaluate=evaluate,
            max_dice_change=max_dice_change,
            engine_cache_dir=engine_cache_dir,
        )
        logger.info(
            "%s: passed %s, 1 - Dice vs fp32 %s",
            precision,
            entries[precision].passed,
            entries[precision].dice_change,
        )
    return PrecisionRecord(
        onnx_sha256=onnx_sha256,
        held_out=held_out,
        fp32=Fp32Figures(dice_vs_truth=mean_region_dice(truths, fp32_labels)),
        precisions=entries,
    )


def _regions(figures: dict[str, float], digits: int) -> str:
    if not figures:
        return "n/a"
    return " / ".join(f"{figures[r]:.{digits}f}" if r in figures else "n/a" for r in BRATS_REGIONS)


def _figure(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def precisions_card_section(record: PrecisionRecord) -> str:
    """The model card's "Reduced precisions" section (markdown) from a held-out record."""
    held_out = record.held_out
    seed = f", cohort seed {held_out.seed}" if held_out.seed is not None else ""
    rows = [
        f"| fp32 | onnxruntime (CPU) | reference | – | {_regions(record.fp32.dice_vs_truth, 3)} "
        "| – | – |"
    ]
    notes = []
    for precision, entry in record.precisions.items():
        version = f" {entry.openvino}" if entry.openvino else ""
        rows.append(
            f"| {precision} | {entry.engine}{version} | {'yes' if entry.passed else '**no**'} "
            f"| {_regions(entry.dice_change, 4)} | {_regions(entry.dice_vs_truth, 3)} "
            f"| {_figure(entry.reference_tile.agreement, 5)} "
            f"| {_figure(entry.reference_tile.max_probability_difference, 3)} |"
        )
        if entry.note:
            notes.append(f"- {precision}: {entry.note}")
        if entry.calibration:
            calibration = entry.calibration.get("calibration", {})
            notes.append(
                f"- {precision}: `{entry.model}` quantised by NNCF "
                f"{entry.calibration.get('nncf_version', '?')} (preset "
                f"{entry.calibration.get('preset', '?')}, "
                f"{len(entry.calibration.get('ignored_scope') or [])} layers kept fp32) on "
                f"{calibration.get('tiles', '?')} phantom tiles ({INT8_CALIBRATION_FILE})."
            )
    cpus = sorted({entry.cpu for entry in record.precisions.values() if entry.cpu})
    bounds = sorted(
        {e.max_dice_change for e in record.precisions.values() if e.max_dice_change is not None}
    )
    bound = ", ".join(f"{b:g}" for b in bounds) or "n/a"
    return (
        f"{CARD_SECTION}\n"
        f"Each reduced precision against fp32 on {held_out.cases} held-out phantom cases"
        f"{seed} ({held_out.source}), measured by `cerebrascan pipeline precisions` on "
        f"{', '.join(cpus) or 'this CPU'} (`precisions.json`, the record the runner reads). "
        f"A precision is admitted when its labels stay within `1 - Dice` ≤ {bound} of fp32's "
        "in every region of every case; at each start it must also agree with fp32 on "
        "≥ `runner.precision_guard_min_agreement` of the reference tile's voxels "
        "(docs/engines.md). The largest probability change on that tile is reported, not "
        "decisive. These figures say how little the reduced arithmetic changes this "
        "phantom-trained model's labels (research use only), not how accurate the model is on "
        "patients.\n\n"
        "| precision | engine | admitted | worst 1 − Dice vs fp32 (WT / TC / ET) "
        "| mean Dice vs truth (WT / TC / ET) | reference-tile agreement | max abs Δp |\n"
        "|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
        + "".join(f"\n{note}" for note in notes)
        + ("\n" if notes else "")
    )


def with_precisions_section(card: str, section: str) -> str:
    """``card`` with its "Reduced precisions" section replaced by ``section`` (inserted before
    "## Limitations", or appended, when the card has none)."""
    block = section.rstrip("\n") + "\n\n"
    if CARD_SECTION in card:
        head, rest = card.split(CARD_SECTION, 1)
        following = rest.find("\n## ")
        tail = rest[following + 1 :] if following >= 0 else ""
        return head + block + tail if tail else head + block.rstrip("\n") + "\n"
    marker = "## Limitations"
    if marker in card:
        head, tail = card.split(marker, 1)
        return head + block + marker + tail
    return card.rstrip("\n") + "\n\n" + block.rstrip("\n") + "\n"
