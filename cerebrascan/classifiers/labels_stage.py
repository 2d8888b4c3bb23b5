"""``cerebrascan classifiers train --cases DIR --labels CSV``: the classifiers on real labels.

The cases are BraTS-style folders (four contrasts and a reference segmentation, on the SRI24
grid as BraTS gives them); the labels a clinical table (:mod:`.clinical_labels`). Each case's
features come from :func:`cerebrascan.classifiers.feature_stage.segmented_case_row`, the rows
the phantom pipeline computes; the cohort and its features are written in the phantom
pipeline's formats under a work folder and fitted by the same
:func:`cerebrascan.classifiers.stages.run_train_stage` (calibration, OOD check, ``spec.json``),
so ``classifiers register`` takes the result as it takes the phantom models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cerebrascan.classifiers.clinical_labels import ClinicalLabels, parse_clinical_csv
from cerebrascan.classifiers.cohort import TASKS
from cerebrascan.classifiers.cohort_files import write_cohort_truth
from cerebrascan.classifiers.feature_stage import read_features, segmented_case_row
from cerebrascan.classifiers.metrics import classification_metrics
from cerebrascan.classifiers.model_card import labels_model_card
from cerebrascan.classifiers.model_registry import load_folder
from cerebrascan.classifiers.models import feature_matrix
from cerebrascan.classifiers.params import ClassifierParams
from cerebrascan.classifiers.stages import run_train_stage
from cerebrascan.classifiers.tasks import task_rows
from cerebrascan.inputs.case_folder import list_cases, read_case, read_labels

logger = logging.getLogger(__name__)

#: Each class needs this many cases: the calibration's stratified folds need two at least.
MIN_CASES_PER_CLASS = 2


def _task_counts(
    records: list[dict[str, Any]], features: dict[str, dict[str, float]]
) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for task in TASKS:
        _, labels, _ = task_rows(task, records, features)
        counts[task] = {label: labels.count(label) for label in sorted(set(labels))}
    return counts


def _labelled_rows(
    params: ClassifierParams, cases_dir: Path, labels_csv: Path, segmentation_model: Path
) -> tuple[ClinicalLabels, list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The table, the records that name a case folder, their feature rows, and the case ids of
    the table without a folder.

    Raises:
        ValueError: a bad table, or no table row matching a case folder.
    """
    labels = parse_clinical_csv(labels_csv.read_text())
    folders = {folder.name: folder for folder in list_cases(cases_dir)}
    records = [r for r in labels.records if r["case_id"] in folders]
    without_case = [r["case_id"] for r in labels.records if r["case_id"] not in folders]
    if not records:
        raise ValueError(
            f"no case id of {labels_csv} (column {labels.columns['case_id']!r}) names a case "
            f"folder under {cases_dir}"
        )
    # the default model's segmentation only when a feature source needs it
    predict = "predicted" in (params.model.classifier_features, params.model.ood_features)
    rows = []
    for record in records:
        folder = folders[record["case_id"]]
        study = read_case(folder)
        images = dict(zip(study.modalities, study.images, strict=True))
        rows.append(
            segmented_case_row(
                record["case_id"],
                images,
                read_labels(folder),
                study.affine,
                record["labels"]["age_years"],
                segmentation_model,
                predict=predict,
            )
        )
        # the cohort files' per-type counts read rendered_type
        record["rendered_type"] = record["labels"]["tumour_type"] or "unknown"
    return labels, records, rows, without_case


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _held_out_metrics(
    task: str,
    folder: Path,
    records: list[dict[str, Any]],
    features: dict[str, dict[str, float]],
    ood_features: dict[str, dict[str, float]],
) -> dict[str, float] | None:
    """Classification metrics and the OOD flag rate of one fitted task on held-out cases
    (None when the held-out table has no case of the task)."""
    loaded = load_folder(folder, task=task, name=task, version="local")
    rows, labels, ids = task_rows(task, records, features)
    if not labels:
        return None
    probabilities = loaded.model.predict_proba(feature_matrix(rows, loaded.feature_names))
    if len(set(labels)) < 2:
        # ROC AUC needs both classes among the held-out cases
        predicted = np.asarray(loaded.classes)[np.argmax(probabilities, axis=1)]
        metrics = {
            "n_cases": float(len(labels)),
            "accuracy": float(np.mean(predicted == np.asarray(labels))),
            "macro_f1": float("nan"),
        }
    else:
        metrics = classification_metrics(loaded.classes, labels, probabilities)
    ood_rows = [ood_features.get(case_id, {}) for case_id in ids]
    scores = loaded.ood.scores(feature_matrix(ood_rows, loaded.ood_feature_names))
    metrics["ood_flagged"] = float(np.mean(scores > loaded.ood.threshold))
    return metrics


def run_labels_train_stage(
    params: ClassifierParams,
    cases_dir: Path,
    labels_csv: Path,
    out_dir: Path,
    work_dir: Path,
    *,
    segmentation_model: Path,
    test_cases_dir: Path | None = None,
    test_labels_csv: Path | None = None,
) -> dict[str, Any]:
    """Fit the classifiers of every task the labels allow on the cases of ``cases_dir``.

    Args:
        params: the ``classifiers`` params (model knobs, feature sources).
        cases_dir: BraTS-style case folders, named as the table's case ids.
        labels_csv: the clinical table.
        out_dir: one model folder per fitted task is written under it.
        work_dir: the cohort (``cohorts/train``) and features (``features/train.jsonl``,
            ``features/test.jsonl``).
        segmentation_model: the model whose predicted segmentation gives the features.
        test_cases_dir: held-out case folders (never trained on); with ``test_labels_csv``
            each fitted task gets ``metrics.json`` with held-out metrics in its folder.
        test_labels_csv: the held-out cases' clinical table.

    Returns:
        The summary (also ``work_dir/labels_summary.json``): columns read, unknown values and
        cases per task, the tasks fitted and the tasks skipped with the reason, and the
        held-out metrics per task when a held-out table was given.

    Raises:
        ValueError: a bad table, no table row matching a case folder, or a held-out case that
            is also a training case.
    """
    if (test_cases_dir is None) != (test_labels_csv is None):
        raise ValueError("held-out evaluation needs both --test-cases and --test-labels")
    labels, records, rows, without_case = _labelled_rows(
        params, cases_dir, labels_csv, segmentation_model
    )
    test_records: list[dict[str, Any]] = []
    if test_cases_dir is not None and test_labels_csv is not None:
        _, test_records, test_rows, _ = _labelled_rows(
            params, test_cases_dir, test_labels_csv, segmentation_model
        )
        shared = {r["case_id"] for r in test_records} & {r["case_id"] for r in records}
        if shared:
            raise ValueError(f"held-out cases {sorted(shared)} are also training cases")
        _write_rows(test_rows, work_dir / "features" / "test.jsonl")
    write_cohort_truth(records, work_dir / "cohorts" / "train")
    features_path = work_dir / "features" / "train.jsonl"
    _write_rows(rows, features_path)
    classifier_features = read_features(features_path, params.model.classifier_features)
    counts = _task_counts(records, classifier_features)
    skipped: dict[str, str] = {}
    for task, by_class in counts.items():
        if len(by_class) < 2:
            skipped[task] = f"one class only {by_class}"
        elif min(by_class.values()) < MIN_CASES_PER_CLASS:
            skipped[task] = f"fewer than {MIN_CASES_PER_CLASS} cases in a class {by_class}"
    fitted = tuple(task for task in TASKS if task not in skipped)
    for task, reason in skipped.items():
        logger.warning("classifier %s not trained: %s", task, reason)
    if fitted:
        run_train_stage(
            params,
            work_dir / "cohorts",
            work_dir / "features",
            out_dir,
            segmentation_model=segmentation_model,
            tasks=fitted,
            training_data=f"clinical labels {labels_csv.name} on the cases of {cases_dir}",
        )
    held_out: dict[str, dict[str, float] | None] = {}
    if test_records:
        test_path = work_dir / "features" / "test.jsonl"
        test_features = read_features(test_path, params.model.classifier_features)
        test_ood = read_features(test_path, params.model.ood_features)
        for task in fitted:
            held_out[task] = _held_out_metrics(
                task, out_dir / task, test_records, test_features, test_ood
            )
    for task in fitted:
        folder = out_dir / task
        spec = json.loads((folder / "spec.json").read_text())
        metrics = held_out.get(task)
        (folder / "metrics.json").write_text(
            json.dumps({"held_out": metrics, "training_data": spec["training_data"]}, indent=2)
            + "\n"
        )
        (folder / "model_card.md").write_text(labels_model_card(task, spec, metrics))
    summary = {
        "cases": len(records),
        "labels_without_case_folder": len(without_case),
        "columns": labels.columns,
        "unknown_values": labels.unknown,
        "cases_per_task": counts,
        "trained": list(fitted),
        "skipped": skipped,
        "held_out": held_out,
    }
    (work_dir / "labels_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
