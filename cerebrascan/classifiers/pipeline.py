"""Stages of the classifier pipeline (``dvc.yaml``: cohort -> features -> train -> evaluate ->
register), driven by the ``classifiers`` section of ``params.yaml``.

* cohort: truth records of the training, held-out and shifted cohorts (no image rendered);
* features: render each case from its seed, segment it with the default model and extract its
  features on the ground-truth labels and on the predicted segmentation
  (:mod:`cerebrascan.classifiers.feature_stage`), one JSON-lines file per cohort;
* train: fit the four calibrated classifiers (on the predicted segmentation's features by
  default: what they see when served) and their OOD detectors (on the ground truth's);
* evaluate: held-out metrics as served (predicted segmentation) and on the ground truth,
  reliability plots, OOD flag rates, model cards;
* register: register every folder in the MLflow registry with alias ``champion``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, Field

from cerebrascan.classifiers.cohort import (
    CohortSpec,
    read_cohort,
    sample_cohort,
    write_cohort_truth,
)
from cerebrascan.classifiers.feature_stage import (
    COHORTS,
    FeatureSource,
    failed_predictions,
    read_features,
)

logger = logging.getLogger(__name__)


class ModelStageParams(BaseModel):
    """Training knobs."""

    seed: int = 0
    c: dict[str, float] = Field(
        default_factory=lambda: {"tumour_type": 0.2, "grade": 0.05, "idh": 0.05, "mgmt": 0.02}
    )
    ood_variance: float = Field(default=0.9, gt=0, lt=1)
    ood_quantile: float = Field(default=0.95, gt=0.5, lt=1)
    classifier_features: FeatureSource = Field(
        default="predicted",
        description="Segmentation the classifiers learn features from: 'predicted' (the "
        "default model's, as served) or 'truth' (the phantoms' ground truth).",
    )
    ood_features: FeatureSource = Field(
        default="truth",
        description="Segmentation the OOD check learns the training distribution from.",
    )


class ClassifierParams(BaseModel):
    """The ``classifiers`` section of ``params.yaml``."""

    train: CohortSpec
    test: CohortSpec
    shifted: CohortSpec
    shifted_protocol: CohortSpec
    shifted_confirmation: CohortSpec
    workers: int = Field(default=2, ge=1)
    model: ModelStageParams = Field(default_factory=ModelStageParams)


def load_classifier_params(path: Path) -> ClassifierParams:
    """Parse the ``classifiers`` section of a params file.

    Raises:
        ValueError: the section is missing or invalid.
    """
    data = yaml.safe_load(path.read_text()) or {}
    if "classifiers" not in data:
        raise ValueError(f"{path} has no 'classifiers' section")
    return ClassifierParams.model_validate(data["classifiers"])


def run_cohort_stage(params: ClassifierParams, out_dir: Path) -> None:
    """Write the truth records of the three cohorts under ``out_dir/<cohort>``."""
    for cohort in COHORTS:
        spec: CohortSpec = getattr(params, cohort)
        records = sample_cohort(spec, f"CLS-{cohort.upper()}")
        write_cohort_truth(records, out_dir / cohort)


# ------------------------------------------------------------------------------------ training

#: Class names of the binary tasks: (name for a False label, name for a True label).
BINARY_CLASSES: dict[str, tuple[str, str]] = {
    "grade": ("low_grade", "high_grade"),
    "idh": ("idh_wildtype", "idh_mutant"),
    "mgmt": ("mgmt_unmethylated", "mgmt_methylated"),
}
#: Tasks whose domain is gliomas only (trained and evaluated on cases recorded as glioma).
GLIOMA_TASKS: tuple[str, ...] = ("idh", "mgmt")
AGE_FEATURE = "age_years"


def class_label(task: str, target: Any) -> str:
    """The class name of a recorded target."""
    if task == "tumour_type":
        return str(target)
    return BINARY_CLASSES[task][int(bool(target))]


def task_rows(
    task: str, records: list[dict[str, Any]], features: dict[str, dict[str, float]]
) -> tuple[list[dict[str, float]], list[str], list[str]]:
    """Feature rows, class labels and case ids of the cases a task applies to."""
    from cerebrascan.classifiers.cohort import task_target

    rows, labels, ids = [], [], []
    for record in records:
        target = task_target(record, task)
        if target is None or record["case_id"] not in features:
            continue
        rows.append(features[record["case_id"]])
        labels.append(class_label(task, target))
        ids.append(record["case_id"])
    return rows, labels, ids


def _mlflow_client() -> Any:
    from cerebrascan.registry import client_for
    from cerebrascan.settings import Settings

    settings = Settings()
    return settings, client_for(settings)


_SOURCE_NAMES: dict[str, str] = {
    "truth": "phantoms' ground-truth segmentation",
    "predicted": "default segmentation model's predicted segmentation",
}


def _segmentation_model_record(model_dir: Path) -> dict[str, Any]:
    """The segmentation model behind the ``predicted`` features: folder, architecture, MD5."""
    import hashlib

    onnx = model_dir / "model.onnx"
    if not onnx.is_file():
        raise FileNotFoundError(f"{onnx} does not exist")
    spec = json.loads((model_dir / "model_spec.json").read_text())
    return {
        "folder": str(model_dir),
        "architecture": spec.get("architecture"),
        "onnx_md5": hashlib.md5(onnx.read_bytes(), usedforsecurity=False).hexdigest(),
    }


def run_train_stage(
    params: ClassifierParams,
    cohort_dir: Path,
    features_dir: Path,
    out_dir: Path,
    *,
    segmentation_model: Path,
) -> None:
    """Fit and save the four classifiers (``out_dir/<task>/``), logging to MLflow."""
    import sklearn

    from cerebrascan.classifiers.cohort import TASKS
    from cerebrascan.classifiers.features import FEATURES_VERSION
    from cerebrascan.classifiers.models import (
        build_classifier,
        feature_matrix,
        fit_ood_detector,
        ood_feature_names,
    )
    from cerebrascan.classifiers.store import REGISTRATION_EXPERIMENT, save_skops
    from cerebrascan.phantoms.tumour_types import TUMOUR_TYPES_VERSION
    from cerebrascan.registry import ensure_experiment

    records = read_cohort(cohort_dir / "train")
    features = read_features(features_dir / "train.jsonl", params.model.classifier_features)
    ood_features = read_features(features_dir / "train.jsonl", params.model.ood_features)
    segmentation_record = _segmentation_model_record(segmentation_model)
    all_names = sorted({name for row in features.values() for name in row})
    settings, client = _mlflow_client()
    experiment_id = ensure_experiment(client, REGISTRATION_EXPERIMENT, settings)
    for task in TASKS:
        started = time.perf_counter()
        rows, labels, _ = task_rows(task, records, features)
        x_all = feature_matrix(rows, all_names)
        usable = ~np.all(np.isnan(x_all), axis=0)
        names = [n for n, keep in zip(all_names, usable, strict=True) if keep]
        x = x_all[:, usable]
        y = np.asarray(labels)
        model = build_classifier(params.model.c[task], params.model.seed)
        model.fit(x, y)
        ood_names = ood_feature_names(names)
        ood_rows, ood_labels, _ = task_rows(task, records, ood_features)
        detector = fit_ood_detector(
            feature_matrix(ood_rows, ood_names),
            ood_labels,
            variance=params.model.ood_variance,
            quantile=params.model.ood_quantile,
            seed=params.model.seed,
        )
        folder = out_dir / task
        folder.mkdir(parents=True, exist_ok=True)
        save_skops(model, folder / "model.skops")
        save_skops(detector.transform, folder / "ood.skops")
        run = client.create_run(experiment_id, run_name=f"train-{task}")
        run_id = run.info.run_id
        client.log_param(run_id, "task", task)
        client.log_param(run_id, "c", params.model.c[task])
        client.log_param(run_id, "train_cases", len(rows))
        client.log_param(run_id, "features", len(names))
        client.log_param(run_id, "train_cohort_seed", params.train.seed)
        client.set_terminated(run_id)
        counts = {str(c): int((y == c).sum()) for c in model.classes_}
        spec = {
            "task": task,
            "classes": [str(c) for c in model.classes_],
            # binary tasks: ROC AUC, Brier and the reliability plot are for the second class
            "positive_class": str(model.classes_[1]) if task in BINARY_CLASSES else None,
            "feature_names": names,
            "ood_feature_names": ood_names,
            "ood": detector.to_state(),
            "domain": "glioma" if task in GLIOMA_TASKS else "all tumour types",
            "training_data": (
                f"synthetic phantoms: {len(rows)} cases of cohort seed {params.train.seed} "
                "(cerebrascan.phantoms tumour types); classifier features on the "
                f"{_SOURCE_NAMES[params.model.classifier_features]}, OOD check on the "
                f"{_SOURCE_NAMES[params.model.ood_features]} ({len(ood_rows)} cases)"
            ),
            "classifier_features": params.model.classifier_features,
            "ood_features": params.model.ood_features,
            "segmentation_model": segmentation_record,
            "train_class_counts": counts,
            "intended_use": "research only; not for clinical decisions",
            "features_version": FEATURES_VERSION,
            "tumour_types_version": TUMOUR_TYPES_VERSION,
            "sklearn_version": sklearn.__version__,
            "params": params.model.model_dump(),
            "mlflow_run_id": run_id,
        }
        (folder / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
        logger.info(
            "trained %s on %d cases (%d features, OOD %d components) in %.1f s",
            task,
            len(rows),
            len(names),
            detector.components,
            time.perf_counter() - started,
        )


# ---------------------------------------------------------------------------------- evaluation


def classification_metrics(
    classes: list[str], labels: list[str], probabilities: np.ndarray
) -> dict[str, float]:
    """Accuracy, macro-F1, ROC AUC (binary, or macro one-vs-rest) and Brier score."""
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


def reliability_plot(
    classes: list[str], labels: list[str], probabilities: np.ndarray, title: str, path: Path
) -> None:
    """Reliability diagram: binary, P(positive) vs observed frequency; multiclass, confidence of
    the predicted class vs its accuracy (10 equal-width bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(labels)
    if len(classes) == 2:
        confidence = probabilities[:, 1]
        correct = (y == classes[1]).astype(float)
        xlabel = f"predicted P({classes[1]})"
    else:
        confidence = probabilities.max(axis=1)
        correct = (np.asarray(classes)[probabilities.argmax(axis=1)] == y).astype(float)
        xlabel = "confidence of the predicted class"
    edges = np.linspace(0.0, 1.0, 11)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, 9)
    centres, observed, counts = [], [], []
    for b in range(10):
        inside = which == b
        if inside.any():
            centres.append(float(confidence[inside].mean()))
            observed.append(float(correct[inside].mean()))
            counts.append(int(inside.sum()))
    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=80)
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axis.plot(centres, observed, "o-", label="held-out phantoms")
    for cx, oy, n in zip(centres, observed, counts, strict=True):
        axis.annotate(str(n), (cx, oy), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("observed frequency" if len(classes) == 2 else "accuracy")
    axis.set_title(title, fontsize=9)
    axis.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def _share_with_interval(share: float, cases: float) -> str:
    """``"83.3% (95 % CI 72-91 %)"``: a flagged share of ``cases`` with its Wilson interval."""
    from scipy.stats import binomtest

    n = int(cases)
    interval = binomtest(round(share * n), n).proportion_ci(method="wilson")
    return f"{share:.1%} (95 % CI {interval.low:.0%}-{interval.high:.0%})"


def _ood_verdict(task: str, metrics: dict[str, float]) -> str:
    """The model card's sentence on the OOD target, from the measured rates as served (and, for
    reference, on ground-truth segmentations)."""
    suffix = "_with_type_gate" if task in GLIOMA_TASKS else ""

    def rates(prefix: str) -> tuple[float, float]:
        shifted = min(
            metrics[f"{prefix}ood_flagged_shifted{suffix}"],
            metrics[f"{prefix}ood_flagged_shifted_confirmation{suffix}"],
        )
        return shifted, metrics[f"{prefix}ood_flagged_in_distribution"]

    shifted, in_distribution = rates("")
    truth_shifted, truth_in_distribution = (
        rates("truth_segmentation_")
        if "truth_segmentation_ood_flagged_in_distribution" in metrics
        else (shifted, in_distribution)
    )
    reference = (
        f" (on ground-truth segmentations: {truth_shifted:.1%} and {truth_in_distribution:.1%})"
    )
    if shifted >= 0.9 and in_distribution <= 0.10:
        return (
            "OOD target met as served on these cohorts, by their point estimates: >= 90 % of "
            f"both never-seen-type cohorts flagged ({shifted:.1%} at least), "
            f"{in_distribution:.1%} of held-out cases{reference}; the intervals above reach "
            "below 90 %, and other training draws do worse (see above)."
        )
    failing = (
        "the held-out side"
        if shifted >= 0.9
        else "the never-seen side"
        if in_distribution <= 0.10
        else "both sides"
    )
    return (
        f"**Not met: the OOD target** (>= 90 % of a shifted setting flagged, <= 10 % of held-out "
        f"cases), on {failing}: as served, {shifted:.1%} of the weaker never-seen-type cohort "
        f"is not assessable and {in_distribution:.1%} of held-out cases{reference}. As served, "
        "failed segmentations (empty, or above the segmentation-uncertainty limit) are not "
        "assessable whatever the tumour, and segmentation errors move in-distribution features "
        "away from the phenotypes the check learned. On ground truth, some central neurocytoma "
        "phantoms sit inside the training phenotypes (periventricular gliomas and ependymomas): "
        "a supervised classifier separates them, an unsupervised check on these features does "
        "not always."
    )


def _flagged(loaded: Any, features: dict[str, dict[str, float]]) -> npt.NDArray[np.bool_]:
    """Which feature rows a loaded classifier's OOD check flags."""
    from cerebrascan.classifiers.models import feature_matrix

    rows = feature_matrix(list(features.values()), loaded.ood_feature_names)
    return np.asarray(loaded.ood.scores(rows) > loaded.ood.threshold)


VIEWS: tuple[tuple[str, FeatureSource], ...] = (("", "predicted"), ("truth_segmentation_", "truth"))
"""Metric key prefix and feature source of each evaluation view: as served (the default
model's predicted segmentation; unprefixed keys) and on the ground-truth segmentation."""


def _share_flagged(flagged: npt.NDArray[np.bool_], empty: int) -> tuple[float, float]:
    """Share of cases not assessable (flagged, or an empty predicted segmentation), and n."""
    n = len(flagged) + empty
    return (float(flagged.sum() + empty) / n if n else float("nan")), float(n)


def _view_metrics(
    task: str,
    loaded: Any,
    type_model: Any,
    features_dir: Path,
    records: dict[str, list[dict[str, Any]]],
    source: FeatureSource,
    max_uncertainty: float | None,
) -> tuple[dict[str, float], list[str], npt.NDArray[np.float64]]:
    """Held-out metrics and OOD rates of one task on one feature source.

    As served (``source="predicted"``) a case whose predicted segmentation is empty or more
    uncertain than ``max_uncertainty`` is not assessable: it is left out of the classification
    metrics and counted as flagged in the OOD rates.

    Returns:
        The metrics, and the held-out labels and probabilities (for the reliability plot).
    """
    from cerebrascan.classifiers.models import feature_matrix

    def cohort(name: str) -> tuple[dict[str, dict[str, float]], list[str]]:
        path = features_dir / f"{name}.jsonl"
        if source == "truth":
            return read_features(path, source), []
        failed = failed_predictions(path, max_uncertainty)
        features = read_features(path, source)
        return {k: v for k, v in features.items() if k not in set(failed)}, failed

    test_features, test_empty = cohort("test")
    rows, labels, _ = task_rows(task, records["test"], test_features)
    probabilities = loaded.model.predict_proba(feature_matrix(rows, loaded.feature_names))
    metrics = classification_metrics(loaded.classes, labels, probabilities)
    # an empty or failed predicted segmentation is "not assessable" when served: flagged
    empty_in_domain = len(task_rows(task, records["test"], {i: {} for i in test_empty})[0])
    metrics["n_failed_segmentations"] = float(empty_in_domain)
    ood_in = loaded.ood.scores(feature_matrix(rows, loaded.ood_feature_names))
    metrics["ood_flagged_in_distribution"], _ = _share_flagged(
        ood_in > loaded.ood.threshold, empty_in_domain
    )
    protocol_features, protocol_empty = cohort("shifted_protocol")
    (
        metrics["ood_flagged_shifted_protocol"],
        metrics["n_shifted_protocol_cases"],
    ) = _share_flagged(_flagged(loaded, protocol_features), len(protocol_empty))
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
        features, empty = cohort(name)
        flagged = _flagged(loaded, features)
        if task in GLIOMA_TASKS:
            # radiogenomics answers only when the tumour-type check accepts the case too
            gated = flagged | _flagged(type_model, features)
            metrics[f"ood_flagged_{name}_with_type_gate"], _ = _share_flagged(gated, len(empty))
        metrics[f"ood_flagged_{name}"], metrics[count_key] = _share_flagged(flagged, len(empty))
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


def run_evaluate_stage(
    params: ClassifierParams, cohort_dir: Path, features_dir: Path, models_dir: Path
) -> None:
    """Held-out metrics, OOD flag rates, reliability plots and model cards of every task, as
    served (features on the default model's predicted segmentation) and on the ground truth."""
    from cerebrascan.classifiers.cohort import TASKS
    from cerebrascan.classifiers.store import load_folder

    records = {name: read_cohort(cohort_dir / name) for name in ("test", "shifted_protocol")}
    settings, client = _mlflow_client()
    max_uncertainty = settings.classifiers.max_segmentation_uncertainty
    type_model = load_folder(
        models_dir / "tumour_type", task="tumour_type", name="tumour_type", version="local"
    )
    for task in TASKS:
        folder = models_dir / task
        loaded = load_folder(folder, task=task, name=task, version="local")
        metrics: dict[str, float] = {}
        for prefix, source in VIEWS:
            view, labels, probabilities = _view_metrics(
                task, loaded, type_model, features_dir, records, source, max_uncertainty
            )
            metrics.update({f"{prefix}{k}": v for k, v in view.items()})
            if not prefix:
                reliability_plot(
                    loaded.classes,
                    labels,
                    probabilities,
                    f"{task}: held-out phantoms as served (n={len(labels)})",
                    folder / "reliability.png",
                )
        metrics = {k: round(v, 4) for k, v in metrics.items()}
        (folder / "metrics.json").write_text(
            json.dumps(
                {**metrics, "training_data": loaded.spec["training_data"]}, indent=2, sort_keys=True
            )
            + "\n"
        )
        (folder / "model_card.md").write_text(
            model_card(task, loaded.spec, metrics, params, max_uncertainty)
        )
        run_id = loaded.spec.get("mlflow_run_id")
        if run_id:
            for key, value in metrics.items():
                client.log_metric(run_id, f"heldout_{key}", float(value))
        logger.info("%s held-out: %s", task, metrics)


def _range(value: Any) -> str:
    if value is None:
        return "20-40 (default)"
    return f"{value[0]}-{value[1]}"


def _model_note(spec: dict[str, Any]) -> str:
    record = spec.get("segmentation_model")
    if not record:
        return ""
    return f" (`{record['folder']}`, {record['architecture']}, ONNX MD5 {record['onnx_md5'][:12]})"


def model_card(
    task: str,
    spec: dict[str, Any],
    metrics: dict[str, float],
    params: ClassifierParams,
    max_uncertainty: float | None = None,
) -> str:
    """The model card (markdown) of one classifier with its held-out metrics."""
    titles = {
        "tumour_type": "Tumour type (6 classes)",
        "grade": "Grade (WHO 3-4 vs 1-2)",
        "idh": "IDH mutation (gliomas)",
        "mgmt": "MGMT promoter methylation (gliomas)",
    }
    lines = [
        f"# CerebraScan classifier: {titles[task]}",
        "",
        "**Research use only. Trained on synthetic phantoms; not validated on patients; never a "
        "clinical diagnosis.**",
        "",
        "## Model",
        "",
        "scikit-learn pipeline (median imputation with missing-value indicators, standard "
        "scaling, L2 logistic regression, C = "
        f"{spec['params']['c'][task]}) inside 5-fold sigmoid probability calibration "
        f"(scikit-learn {spec['sklearn_version']}), saved with skops. Classes: "
        f"{', '.join(spec['classes'])}. Domain: {spec['domain']}.",
        "",
        "Out-of-distribution check on the "
        f"{len(spec['ood_feature_names'])} phenotype columns (location, sub-region fractions, "
        "volumes, median signal of each sub-region per contrast): imputation, normal scores "
        f"by training quantiles, PCA ({spec['ood']['components']} components, "
        f"{params.model.ood_variance:.0%} of the variance); three statistics, each against "
        "its own threshold set on out-of-fold training rows: Hotelling T^2 per component, PCA "
        "reconstruction residual and the Mahalanobis distance to the nearest training class "
        "(their union keeps about "
        f"{spec['ood']['quantile']:.0%} of training-like cases). Above any threshold the "
        "analyzers answer 'not assessable'.",
        "",
        "## Training data",
        "",
        f"{spec['training_data']}. Class counts: {spec['train_class_counts']}. Features "
        f"(version {spec['features_version']}, {len(spec['feature_names'])} columns): pyradiomics "
        "first-order / GLCM / GLSZM per sub-region and modality on a 2 mm grid, shape, volumes, "
        "location (SRI24 lobes, infratentorial share, midline / ventricle / brain-surface "
        "distances) and age when given. Phantom tumour types "
        f"{spec['tumour_types_version']}: phenotypes and their sources in "
        "`cerebrascan/phantoms/tumour_types.py`; recorded labels carry deliberate noise "
        f"(type {params.train.label_noise.tumour_type:.0%}, "
        f"IDH {params.train.label_noise.idh:.0%}, "
        f"MGMT {params.train.label_noise.mgmt:.0%}).",
        "",
        "At serving time the analyzers compute the features on the segmentation that the "
        "registered segmentation model predicts (its model card names the phantom tumour "
        "types it was trained on, and how well it segments each). The classifier therefore "
        "learns from the same kind of features, "
        f"those on the {_SOURCE_NAMES[spec.get('classifier_features', 'truth')]}"
        + _model_note(spec)
        + ". The OOD check learns the training phenotypes from the "
        f"{_SOURCE_NAMES[spec.get('ood_features', 'truth')]}: a segmentation that goes wrong "
        "moves the features away from them, and the case becomes 'not assessable'. Another "
        "segmentation model (an imported nnU-Net) gives other features: re-run the pipeline "
        "with it (`cerebrascan classifiers features --segmentation-model`).",
        "",
        "## Intended use",
        "",
        "Research and software testing of the CerebraScan pipeline. Not for diagnosis, grading "
        "or treatment decisions.",
        "",
        f"## Held-out metrics (phantom cohort seed {params.test.seed})",
        "",
        "'As served': features on the default model's predicted segmentation, as the analyzers "
        "compute them; a case whose predicted segmentation is empty or failed (segmentation "
        "uncertainty above `classifiers.max_segmentation_uncertainty`, "
        f"{'off' if max_uncertainty is None else max_uncertainty}) counts as not assessable. "
        "'Ground truth': features on the phantom's true segmentation. OOD rates with their "
        "Wilson 95 % intervals.",
        "",
        "| metric | as served | ground truth |",
        "|---|---|---|",
        f"| cases | {int(metrics['n_cases'])} (+ {int(metrics['n_failed_segmentations'])} with an "
        f"empty or failed segmentation) | {int(metrics['truth_segmentation_n_cases'])} |",
    ]
    for key in ("accuracy", "macro_f1", "roc_auc", "brier"):
        lines.append(f"| {key} | {metrics[key]:.3f} | {metrics['truth_segmentation_' + key]:.3f} |")
    for key in sorted(k for k in metrics if k.startswith("f1_")):
        lines.append(f"| {key} | {metrics[key]:.3f} | {metrics['truth_segmentation_' + key]:.3f} |")

    def both(key: str, n_key: str) -> str:
        return " | ".join(
            _share_with_interval(metrics[prefix + key], metrics[prefix + n_key])
            for prefix, _ in VIEWS
        )

    served_held_out = metrics["n_cases"] + metrics["n_failed_segmentations"]
    metrics = {**metrics, "n_held_out_with_empty": served_held_out}
    metrics["truth_segmentation_n_held_out_with_empty"] = metrics["truth_segmentation_n_cases"]
    lines += [
        "| OOD flagged, held-out (in distribution) | "
        f"{both('ood_flagged_in_distribution', 'n_held_out_with_empty')} |",
        f"| OOD flagged, shifted cohort ({int(metrics['n_shifted_cases'])} central "
        f"neurocytomas, seed {params.shifted.seed}, a type never trained on) | "
        f"{both('ood_flagged_shifted', 'n_shifted_cases')} |",
        "| OOD flagged, confirmation cohort ("
        f"{int(metrics['n_shifted_confirmation_cases'])} central neurocytomas, seed "
        f"{params.shifted_confirmation.seed}, not looked at while the check was designed) | "
        f"{both('ood_flagged_shifted_confirmation', 'n_shifted_confirmation_cases')} |",
    ]
    if task in GLIOMA_TASKS:
        lines += [
            "| same, shifted cohort, with the tumour-type check that gates this analyzer | "
            f"{both('ood_flagged_shifted_with_type_gate', 'n_shifted_cases')} |",
            "| same, confirmation cohort, with the tumour-type check | "
            + both(
                "ood_flagged_shifted_confirmation_with_type_gate", "n_shifted_confirmation_cases"
            )
            + " |",
        ]
    lines += [
        "| OOD flagged, shifted protocol ("
        f"{int(metrics['n_shifted_protocol_cases'])} held-out-like cases at SNR "
        f"{_range(params.shifted_protocol.generator_overrides.get('snr'))} instead of "
        f"{_range(params.test.generator_overrides.get('snr'))}) | "
        f"{both('ood_flagged_shifted_protocol', 'n_shifted_protocol_cases')} |",
        "",
        "Accuracy on the shifted protocol as served, all of its cases (the check flags "
        f"{metrics['ood_flagged_shifted_protocol']:.1%} of them; features move little with "
        "noise at 2 mm, so the labels stay usable): "
        + (
            f"accuracy {metrics['shifted_protocol_accuracy']:.3f}, macro-F1 "
            f"{metrics['shifted_protocol_macro_f1']:.3f}, ROC AUC "
            f"{metrics['shifted_protocol_roc_auc']:.3f}."
            if "shifted_protocol_accuracy" in metrics
            else "not computed (a class is missing from that small cohort)."
        ),
        "",
        "The OOD rates above are those of this training draw. Refitted on other draws of the "
        "same size from the same generator, the check flags fewer never-seen-type phantoms on "
        "average (a lucky draw: the check was designed on this one); see `docs/classifiers.md` "
        "and `experiments/ood_training_size.py`.",
        "",
        "Reliability plot: `reliability.png`. Metrics file: `metrics.json` (tracked by DVC).",
        "",
        _ood_verdict(task, metrics),
    ]
    if task == "mgmt":
        lines += [
            "",
            "MGMT is reported as measured: its imaging correlates are weak in the literature and "
            "in the phantoms (a slightly smaller edema), and the generator was not tuned to "
            "make it look better.",
        ]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- registration


def run_register_stage(models_dir: Path, record: Path) -> dict[str, str]:
    """Register every classifier folder under its configured name with the configured alias."""
    from cerebrascan.classifiers.store import register_folder
    from cerebrascan.settings import Settings

    settings = Settings()
    config = settings.classifiers
    versions: dict[str, str] = {}
    for task, name in config.model_names.items():
        folder = models_dir / task
        spec = json.loads((folder / "spec.json").read_text())
        versions[task] = register_folder(
            settings, folder, name=name, alias=config.alias, run_id=spec.get("mlflow_run_id")
        )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(
        json.dumps(
            {
                task: {"name": config.model_names[task], "version": v}
                for task, v in versions.items()
            },
            indent=2,
        )
        + "\n"
    )
    return versions
