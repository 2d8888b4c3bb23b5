"""Stages of the classifier pipeline (``dvc.yaml``: cohort -> features -> train -> evaluate ->
register), driven by the ``classifiers`` section of ``params.yaml`` (I/O: each stage reads its
inputs, calls the maths and writes its outputs).

* cohort: truth records of the training, held-out and shifted cohorts (no image rendered);
* features: render each case from its seed, segment it with the default model and extract its
  features on the ground-truth labels and on the predicted segmentation
  (:mod:`cerebrascan.classifiers.feature_stage`), one JSON-lines file per cohort;
* train: fit the four calibrated classifiers (on the predicted segmentation's features by
  default: what they see when served) and their OOD detectors (on the ground truth's),
  :func:`cerebrascan.classifiers.fitting.fit_task`;
* evaluate: held-out metrics as served (predicted segmentation) and on the ground truth
  (:mod:`cerebrascan.classifiers.metrics`), reliability plots, OOD flag rates, model cards
  (:mod:`cerebrascan.classifiers.model_card`);
* register: register every folder in the MLflow registry with alias ``champion``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cerebrascan.classifiers.cohort import TASKS, CohortSpec, sample_cohort
from cerebrascan.classifiers.cohort_files import read_cohort, write_cohort_truth
from cerebrascan.classifiers.feature_stage import (
    COHORTS,
    FeatureSource,
    failed_predictions,
    read_features,
)
from cerebrascan.classifiers.fitting import FittedTask, fit_task
from cerebrascan.classifiers.metrics import (
    EVALUATED_COHORTS,
    VIEWS,
    CohortFeatures,
    reliability_bins,
    view_metrics,
)
from cerebrascan.classifiers.model_card import SOURCE_NAMES, model_card
from cerebrascan.classifiers.params import ClassifierParams
from cerebrascan.classifiers.tasks import BINARY_CLASSES, GLIOMA_TASKS

if TYPE_CHECKING:
    from cerebrascan.settings import Settings

logger = logging.getLogger(__name__)


def run_cohort_stage(params: ClassifierParams, out_dir: Path) -> None:
    """Write the truth records of the cohorts under ``out_dir/<cohort>``.

    Args:
        params: the pipeline's params (one :class:`CohortSpec` per cohort).
        out_dir: the cohorts' folder.
    """
    for cohort in COHORTS:
        spec: CohortSpec = getattr(params, cohort)
        records = sample_cohort(spec, f"CLS-{cohort.upper()}")
        write_cohort_truth(records, out_dir / cohort)


def _mlflow_client() -> tuple[Settings, Any]:
    """The process settings and an MLflow client of their tracking store."""
    from cerebrascan.registry import client_for
    from cerebrascan.settings import Settings

    settings = Settings()
    return settings, client_for(settings)


def _segmentation_model_record(model_dir: Path) -> dict[str, Any]:
    """The segmentation model behind the ``predicted`` features: folder, architecture, MD5.

    Raises:
        FileNotFoundError: the folder has no ``model.onnx``.
    """
    onnx = model_dir / "model.onnx"
    if not onnx.is_file():
        raise FileNotFoundError(f"{onnx} does not exist")
    spec = json.loads((model_dir / "model_spec.json").read_text())
    return {
        "folder": str(model_dir),
        "architecture": spec.get("architecture"),
        "onnx_md5": hashlib.md5(onnx.read_bytes(), usedforsecurity=False).hexdigest(),
    }


def _training_spec(
    task: str,
    fitted: FittedTask,
    params: ClassifierParams,
    segmentation_record: dict[str, Any],
    run_id: str,
    training_data: str | None = None,
) -> dict[str, Any]:
    """The ``spec.json`` record of a fitted task: classes, columns, OOD numbers, provenance."""
    import sklearn

    from cerebrascan.classifiers.features import FEATURES_VERSION
    from cerebrascan.phantoms.tumour_types import TUMOUR_TYPES_VERSION

    model = fitted.model
    return {
        "task": task,
        "classes": [str(c) for c in model.classes_],
        # binary tasks: ROC AUC, Brier and the reliability plot are for the second class
        "positive_class": str(model.classes_[1]) if task in BINARY_CLASSES else None,
        "feature_names": fitted.feature_names,
        "ood_feature_names": fitted.ood_feature_names,
        "ood": fitted.detector.to_state(),
        "domain": "glioma" if task in GLIOMA_TASKS else "all tumour types",
        "training_data": (
            f"{training_data or 'synthetic phantoms'}: {fitted.n_cases} cases"
            + ("" if training_data else f" of cohort seed {params.train.seed}")
            + " (cerebrascan.phantoms tumour types); classifier features on the "
            f"{SOURCE_NAMES[params.model.classifier_features]}, OOD check on the "
            f"{SOURCE_NAMES[params.model.ood_features]} ({fitted.n_ood_cases} cases)"
        ),
        "classifier_features": params.model.classifier_features,
        "ood_features": params.model.ood_features,
        "segmentation_model": segmentation_record,
        "train_class_counts": fitted.class_counts,
        "intended_use": "research only; not for clinical decisions",
        "features_version": FEATURES_VERSION,
        "tumour_types_version": TUMOUR_TYPES_VERSION,
        "sklearn_version": sklearn.__version__,
        "params": params.model.model_dump(),
        "mlflow_run_id": run_id,
    }


def run_train_stage(
    params: ClassifierParams,
    cohort_dir: Path,
    features_dir: Path,
    out_dir: Path,
    *,
    segmentation_model: Path,
    tasks: tuple[str, ...] = TASKS,
    training_data: str | None = None,
) -> None:
    """Fit and save the four classifiers (``out_dir/<task>/``), logging to MLflow.

    Args:
        params: the pipeline's params.
        cohort_dir: the cohorts' folder (``train`` is read).
        features_dir: the features' folder (``train.jsonl`` is read).
        out_dir: one model folder per task is written under it.
        segmentation_model: the segmentation model folder behind the predicted features.
        tasks: the tasks to fit (all four by default).
        training_data: what the cohort is, for ``spec.json`` (default: the phantom cohort).
    """
    from cerebrascan.classifiers.model_registry import REGISTRATION_EXPERIMENT, save_skops
    from cerebrascan.registry import ensure_experiment

    records = read_cohort(cohort_dir / "train")
    features = read_features(features_dir / "train.jsonl", params.model.classifier_features)
    ood_features = read_features(features_dir / "train.jsonl", params.model.ood_features)
    segmentation_record = _segmentation_model_record(segmentation_model)
    settings, client = _mlflow_client()
    experiment_id = ensure_experiment(client, REGISTRATION_EXPERIMENT, settings)
    for task in tasks:
        started = time.perf_counter()
        fitted = fit_task(task, records, features, ood_features, params.model)
        folder = out_dir / task
        folder.mkdir(parents=True, exist_ok=True)
        save_skops(fitted.model, folder / "model.skops")
        save_skops(fitted.detector.transform, folder / "ood.skops")
        run = client.create_run(experiment_id, run_name=f"train-{task}")
        run_id = run.info.run_id
        client.log_param(run_id, "task", task)
        client.log_param(run_id, "c", params.model.c[task])
        client.log_param(run_id, "train_cases", fitted.n_cases)
        client.log_param(run_id, "features", len(fitted.feature_names))
        client.log_param(run_id, "train_cohort_seed", params.train.seed)
        client.set_terminated(run_id)
        spec = _training_spec(task, fitted, params, segmentation_record, run_id, training_data)
        (folder / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
        logger.info(
            "trained %s on %d cases (%d features, OOD %d components) in %.1f s",
            task,
            fitted.n_cases,
            len(fitted.feature_names),
            fitted.detector.components,
            time.perf_counter() - started,
        )


def _read_cohort_features(
    path: Path, source: FeatureSource, max_uncertainty: float | None
) -> CohortFeatures:
    """A cohort's feature rows on ``source``; as served, the failed predictions apart."""
    if source == "truth":
        return read_features(path, source), []
    failed = failed_predictions(path, max_uncertainty)
    features = read_features(path, source)
    return {k: v for k, v in features.items() if k not in set(failed)}, failed


def write_reliability_plot(
    classes: list[str],
    labels: list[str],
    probabilities: npt.NDArray[np.float64],
    title: str,
    path: Path,
) -> None:
    """Draw the reliability diagram (:func:`cerebrascan.classifiers.metrics.reliability_bins`)
    and save it as a PNG.

    Args:
        classes: the classifier's classes.
        labels: the true class of each row.
        probabilities: ``(n, len(classes))`` predicted probabilities.
        title: the plot's title.
        path: the PNG file written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    binary = len(classes) == 2
    bins = reliability_bins(classes, labels, probabilities)
    xlabel = f"predicted P({classes[1]})" if binary else "confidence of the predicted class"
    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=80)
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axis.plot(bins.centres, bins.observed, "o-", label="held-out phantoms")
    for cx, oy, n in zip(bins.centres, bins.observed, bins.counts, strict=True):
        axis.annotate(str(n), (cx, oy), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("observed frequency" if binary else "accuracy")
    axis.set_title(title, fontsize=9)
    axis.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def run_evaluate_stage(
    params: ClassifierParams, cohort_dir: Path, features_dir: Path, models_dir: Path
) -> None:
    """Held-out metrics, OOD flag rates, reliability plots and model cards of every task, as
    served (features on the default model's predicted segmentation) and on the ground truth.

    Args:
        params: the pipeline's params.
        cohort_dir: the cohorts' folder.
        features_dir: the features' folder.
        models_dir: the model folders; each gets ``metrics.json``, ``reliability.png`` and
            ``model_card.md``.
    """
    from cerebrascan.classifiers.model_registry import load_folder

    records = {name: read_cohort(cohort_dir / name) for name in ("test", "shifted_protocol")}
    settings, client = _mlflow_client()
    max_uncertainty = settings.classifiers.max_segmentation_uncertainty
    views = {
        source: {
            name: _read_cohort_features(features_dir / f"{name}.jsonl", source, max_uncertainty)
            for name in EVALUATED_COHORTS
        }
        for _, source in VIEWS
    }
    type_model = load_folder(
        models_dir / "tumour_type", task="tumour_type", name="tumour_type", version="local"
    )
    for task in TASKS:
        folder = models_dir / task
        loaded = load_folder(folder, task=task, name=task, version="local")
        metrics: dict[str, float] = {}
        for prefix, source in VIEWS:
            view, labels, probabilities = view_metrics(
                task, loaded, type_model, views[source], records
            )
            metrics.update({f"{prefix}{k}": v for k, v in view.items()})
            if not prefix:
                write_reliability_plot(
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


def run_register_stage(models_dir: Path, record: Path) -> dict[str, str]:
    """Register every classifier folder under its configured name with the configured alias.

    Args:
        models_dir: the model folders, one per task.
        record: JSON file written with each task's registered name and version.

    Returns:
        The registered version of each task.
    """
    from cerebrascan.classifiers.model_registry import register_folder
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
