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

from cerebrascan.classifiers.clinical_labels import parse_clinical_csv
from cerebrascan.classifiers.cohort import TASKS
from cerebrascan.classifiers.cohort_files import write_cohort_truth
from cerebrascan.classifiers.feature_stage import read_features, segmented_case_row
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


def run_labels_train_stage(
    params: ClassifierParams,
    cases_dir: Path,
    labels_csv: Path,
    out_dir: Path,
    work_dir: Path,
    *,
    segmentation_model: Path,
) -> dict[str, Any]:
    """Fit the classifiers of every task the labels allow on the cases of ``cases_dir``.

    Args:
        params: the ``classifiers`` params (model knobs, feature sources).
        cases_dir: BraTS-style case folders, named as the table's case ids.
        labels_csv: the clinical table.
        out_dir: one model folder per fitted task is written under it.
        work_dir: the cohort (``cohorts/train``) and features (``features/train.jsonl``).
        segmentation_model: the model whose predicted segmentation gives the features.

    Returns:
        The summary (also ``work_dir/labels_summary.json``): columns read, unknown values and
        cases per task, the tasks fitted and the tasks skipped with the reason.

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
    write_cohort_truth(records, work_dir / "cohorts" / "train")
    features_path = work_dir / "features" / "train.jsonl"
    features_path.parent.mkdir(parents=True, exist_ok=True)
    features_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
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
    summary = {
        "cases": len(records),
        "labels_without_case_folder": len(without_case),
        "columns": labels.columns,
        "unknown_values": labels.unknown,
        "cases_per_task": counts,
        "trained": list(fitted),
        "skipped": skipped,
    }
    (work_dir / "labels_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
