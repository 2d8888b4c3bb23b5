"""Fit one task's calibrated classifier and its OOD check on a cohort's features (maths only).

The train stage (:func:`cerebrascan.classifiers.stages.run_train_stage`) reads the cohort and
its features, calls :func:`fit_task` per task and saves what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cerebrascan.classifiers.models import (
    OodDetector,
    build_classifier,
    feature_matrix,
    fit_ood_detector,
    ood_feature_names,
)
from cerebrascan.classifiers.params import ModelStageParams
from cerebrascan.classifiers.tasks import task_rows


@dataclass(frozen=True)
class FittedTask:
    """One task's fitted models and the numbers its ``spec.json`` records.

    Attributes:
        model: the fitted calibrated classifier (:func:`build_classifier`).
        detector: the fitted OOD detector.
        feature_names: the classifier's columns (those not NaN in every training row).
        ood_feature_names: the OOD check's columns.
        n_cases: training rows of the classifier.
        n_ood_cases: training rows of the OOD check.
        class_counts: training rows per class.
    """

    model: Any
    detector: OodDetector
    feature_names: list[str]
    ood_feature_names: list[str]
    n_cases: int
    n_ood_cases: int
    class_counts: dict[str, int]


def fit_task(
    task: str,
    records: list[dict[str, Any]],
    features: dict[str, dict[str, float]],
    ood_features: dict[str, dict[str, float]],
    params: ModelStageParams,
) -> FittedTask:
    """Fit the classifier of ``task`` on ``features`` and its OOD check on ``ood_features``.

    Args:
        task: ``tumour_type``, ``grade``, ``idh`` or ``mgmt``.
        records: the training cohort's truth records.
        features: the classifier's feature row of each case id.
        ood_features: the OOD check's feature row of each case id.
        params: the training knobs.

    Returns:
        The fitted models and their training numbers.
    """
    all_names = sorted({name for row in features.values() for name in row})
    rows, labels, _ = task_rows(task, records, features)
    x_all = feature_matrix(rows, all_names)
    usable = ~np.all(np.isnan(x_all), axis=0)
    names = [n for n, keep in zip(all_names, usable, strict=True) if keep]
    x = x_all[:, usable]
    y = np.asarray(labels)
    # 5 calibration folds; fewer for a small labelled cohort (each class needs one per fold)
    smallest_class = min(int((y == c).sum()) for c in set(labels))
    model = build_classifier(params.c[task], params.seed, folds=max(2, min(5, smallest_class)))
    model.fit(x, y)
    ood_names = ood_feature_names(names)
    ood_rows, ood_labels, _ = task_rows(task, records, ood_features)
    detector = fit_ood_detector(
        feature_matrix(ood_rows, ood_names),
        ood_labels,
        variance=params.ood_variance,
        quantile=params.ood_quantile,
        seed=params.seed,
    )
    return FittedTask(
        model=model,
        detector=detector,
        feature_names=names,
        ood_feature_names=ood_names,
        n_cases=len(rows),
        n_ood_cases=len(ood_rows),
        class_counts={str(c): int((y == c).sum()) for c in model.classes_},
    )
