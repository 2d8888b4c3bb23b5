"""Held-out metrics of the classifiers: classification scores, reliability bins, OOD flag rates
(maths only; the evaluate stage, :func:`cerebrascan.classifiers.stages.run_evaluate_stage`,
reads the files and writes the results)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cerebrascan.classifiers.feature_stage import FeatureSource
from cerebrascan.classifiers.models import feature_matrix
from cerebrascan.classifiers.tasks import GLIOMA_TASKS, task_rows

if TYPE_CHECKING:
    from cerebrascan.classifiers.model_registry import LoadedClassifier

VIEWS: tuple[tuple[str, FeatureSource], ...] = (("", "predicted"), ("truth_segmentation_", "truth"))
"""Metric key prefix and feature source of each evaluation view: as served (the default
model's predicted segmentation; unprefixed keys) and on the ground-truth segmentation."""

EVALUATED_COHORTS: tuple[str, ...] = ("test", "shifted_protocol", "shifted", "shifted_confirmation")
"""The cohorts whose features one view's metrics need."""

FeatureRows = dict[str, dict[str, float]]
"""Feature row of each case id."""

CohortFeatures = tuple[FeatureRows, list[str]]
"""A cohort's assessable feature rows, and the ids of the cases whose segmentation failed (empty,
or above the uncertainty limit: not assessable as served)."""


def classification_metrics(
    classes: list[str], labels: list[str], probabilities: npt.NDArray[np.float64]
) -> dict[str, float]:
    """Accuracy, macro-F1, ROC AUC (binary, or macro one-vs-rest) and Brier score.

    Args:
        classes: the classifier's classes, in the probabilities' column order.
        labels: the true class of each row.
        probabilities: ``(n, len(classes))`` predicted probabilities.

    Returns:
        ``n_cases``, ``accuracy``, ``macro_f1``, ``roc_auc`` and ``brier``.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y = np.asarray(labels)
    predicted = np.asarray(classes)[np.argmax(probabilities, axis=1)]
    onehot = (y[:, None] == np.asarray(classes)[None, :]).astype(float)
    metrics = {
        "n_cases": float(len(y)),
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, average="macro", labels=classes, zero_division=0)),
    }
    if len(classes) == 2:
        metrics["roc_auc"] = float(roc_auc_score(onehot[:, 1], probabilities[:, 1]))
        metrics["brier"] = float(np.mean((probabilities[:, 1] - onehot[:, 1]) ** 2))
    else:
        present = onehot.sum(axis=0) > 0
        metrics["roc_auc"] = float(
            np.mean(
                [
                    roc_auc_score(onehot[:, k], probabilities[:, k])
                    for k in range(len(classes))
                    if present[k] and not onehot[:, k].all()
                ]
            )
        )
        metrics["brier"] = float(np.mean(((probabilities - onehot) ** 2).sum(axis=1)))
    return metrics


@dataclass(frozen=True)
class ReliabilityBins:
    """The non-empty bins of a reliability diagram.

    Attributes:
        centres: mean confidence of each bin.
        observed: observed frequency (binary) or accuracy (multiclass) of each bin.
        counts: rows in each bin.
    """

    centres: list[float]
    observed: list[float]
    counts: list[int]


def reliability_bins(
    classes: list[str], labels: list[str], probabilities: npt.NDArray[np.float64]
) -> ReliabilityBins:
    """Reliability bins: binary, P(positive) vs observed frequency; multiclass, confidence of
    the predicted class vs its accuracy (10 equal-width bins, empty ones left out).

    Args:
        classes: the classifier's classes (the second is the positive one of a binary task).
        labels: the true class of each row.
        probabilities: ``(n, len(classes))`` predicted probabilities.

    Returns:
        The non-empty bins, in increasing confidence.
    """
    y = np.asarray(labels)
    if len(classes) == 2:
        confidence = probabilities[:, 1]
        correct = (y == classes[1]).astype(float)
    else:
        confidence = probabilities.max(axis=1)
        correct = (np.asarray(classes)[probabilities.argmax(axis=1)] == y).astype(float)
    edges = np.linspace(0.0, 1.0, 11)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, 9)
    centres, observed, counts = [], [], []
    for b in range(10):
        inside = which == b
        if inside.any():
            centres.append(float(confidence[inside].mean()))
            observed.append(float(correct[inside].mean()))
            counts.append(int(inside.sum()))
    return ReliabilityBins(centres=centres, observed=observed, counts=counts)


def wilson_interval(share: float, cases: float) -> tuple[float, float]:
    """The Wilson 95 % interval of a share of ``cases``.

    Args:
        share: observed share, in [0, 1].
        cases: number of cases (a whole number).

    Returns:
        ``(low, high)``.
    """
    from scipy.stats import binomtest

    n = int(cases)
    interval = binomtest(round(share * n), n).proportion_ci(method="wilson")
    return float(interval.low), float(interval.high)


def flagged_rows(loaded: LoadedClassifier, features: FeatureRows) -> npt.NDArray[np.bool_]:
    """Which feature rows a loaded classifier's OOD check flags."""
    rows = feature_matrix(list(features.values()), loaded.ood_feature_names)
    return np.asarray(loaded.ood.scores(rows) > loaded.ood.threshold)


def share_flagged(flagged: npt.NDArray[np.bool_], empty: int) -> tuple[float, float]:
    """Share of cases not assessable (flagged, or an empty predicted segmentation), and n."""
    n = len(flagged) + empty
    return (float(flagged.sum() + empty) / n if n else float("nan")), float(n)


def view_metrics(
    task: str,
    loaded: LoadedClassifier,
    type_model: LoadedClassifier,
    cohorts: dict[str, CohortFeatures],
    records: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, float], list[str], npt.NDArray[np.float64]]:
    """Held-out metrics and OOD rates of one task on one feature source.

    As served a case whose predicted segmentation failed (empty, or more uncertain than the
    limit) is not assessable: it is left out of the classification metrics and counted as
    flagged in the OOD rates.

    Args:
        task: the task.
        loaded: the task's classifier.
        type_model: the tumour-type classifier, whose OOD check also gates the glioma tasks.
        cohorts: the features of each of :data:`EVALUATED_COHORTS` on this view's source.
        records: truth records of the ``test`` and ``shifted_protocol`` cohorts.

    Returns:
        The metrics, and the held-out labels and probabilities (for the reliability plot).
    """
    test_features, test_empty = cohorts["test"]
    rows, labels, _ = task_rows(task, records["test"], test_features)
    probabilities = loaded.model.predict_proba(feature_matrix(rows, loaded.feature_names))
    metrics = classification_metrics(loaded.classes, labels, probabilities)
    # an empty or failed predicted segmentation is "not assessable" when served: flagged
    empty_in_domain = len(task_rows(task, records["test"], {i: {} for i in test_empty})[0])
    metrics["n_failed_segmentations"] = float(empty_in_domain)
    ood_in = loaded.ood.scores(feature_matrix(rows, loaded.ood_feature_names))
    metrics["ood_flagged_in_distribution"], _ = share_flagged(
        ood_in > loaded.ood.threshold, empty_in_domain
    )
    protocol_features, protocol_empty = cohorts["shifted_protocol"]
    (
        metrics["ood_flagged_shifted_protocol"],
        metrics["n_shifted_protocol_cases"],
    ) = share_flagged(flagged_rows(loaded, protocol_features), len(protocol_empty))
    protocol_rows, protocol_labels, _ = task_rows(
        task, records["shifted_protocol"], protocol_features
    )
    if len(set(protocol_labels)) == len(loaded.classes):
        protocol_metrics = classification_metrics(
            loaded.classes,
            protocol_labels,
            loaded.model.predict_proba(feature_matrix(protocol_rows, loaded.feature_names)),
        )
        for key in ("accuracy", "macro_f1", "roc_auc"):
            metrics[f"shifted_protocol_{key}"] = protocol_metrics[key]
    for name, count_key in (
        ("shifted", "n_shifted_cases"),
        ("shifted_confirmation", "n_shifted_confirmation_cases"),
    ):
        features, empty = cohorts[name]
        flagged = flagged_rows(loaded, features)
        if task in GLIOMA_TASKS:
            # radiogenomics answers only when the tumour-type check accepts the case too
            gated = flagged | flagged_rows(type_model, features)
            metrics[f"ood_flagged_{name}_with_type_gate"], _ = share_flagged(gated, len(empty))
        metrics[f"ood_flagged_{name}"], metrics[count_key] = share_flagged(flagged, len(empty))
    kept = ood_in <= loaded.ood.threshold
    if kept.sum() >= 10 and len(set(np.asarray(labels)[kept])) == len(loaded.classes):
        accepted = classification_metrics(
            loaded.classes, list(np.asarray(labels)[kept]), probabilities[kept]
        )
        metrics.update({f"accepted_{k}": v for k, v in accepted.items()})
    if task == "tumour_type":
        from sklearn.metrics import f1_score

        predicted = np.asarray(loaded.classes)[probabilities.argmax(axis=1)]
        per_class = f1_score(labels, predicted, average=None, labels=loaded.classes)
        metrics.update(
            {f"f1_{c}": float(v) for c, v in zip(loaded.classes, per_class, strict=True)}
        )
    return metrics, labels, probabilities
