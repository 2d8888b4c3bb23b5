"""Classifier model folders: save, load safely, register in and resolve from MLflow (I/O).

A folder (``models/classifiers/<task>/``) holds:

* ``model.skops``: the calibrated scikit-learn classifier, saved with skops (no pickle);
* ``ood.skops``: the out-of-distribution detector's scikit-learn transform;
* ``spec.json``: task, classes, feature names, OOD numbers, versions, training data;
* ``metrics.json`` and ``model_card.md`` (held-out metrics) and ``reliability.png``.

Loading never unpickles: skops refuses every type not listed as trusted, and only
scikit-learn and numpy types are trusted here (anything else is refused with its name).
Registration is :func:`cerebrascan.registry.register_version` (the flow of every model kind):
MLflow client only, one registered model per task with alias ``champion``, the skops files'
SHA-256 as version tags checked after download.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cerebrascan.classifiers.models import OodDetector
from cerebrascan.registry import (
    cached_version_folder,
    checksum_mismatches,
    client_for,
    register_version,
    version_by_alias,
)
from cerebrascan.settings import Settings
from runners.engine_cache import file_digest

logger = logging.getLogger(__name__)

MODEL_FILES: tuple[str, ...] = (
    "model.skops",
    "ood.skops",
    "spec.json",
    "metrics.json",
    "model_card.md",
)
OPTIONAL_FILES: tuple[str, ...] = ("reliability.png",)
LOAD_FILES: tuple[str, ...] = ("model.skops", "ood.skops", "spec.json")
REGISTRATION_EXPERIMENT = "cerebrascan-classifiers"
CHECKSUM_TAGS: dict[str, str] = {"model.skops": "model_sha256", "ood.skops": "ood_sha256"}
"""File -> the version tag holding its SHA-256."""
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.", "scipy.")
_load_lock = threading.Lock()
_loaded: dict[tuple[str | None, ...], LoadedClassifier] = {}


class ClassifierNotAvailableError(RuntimeError):
    """No registered version for the task, or its files are missing or unsafe."""


@dataclass(frozen=True)
class LoadedClassifier:
    """A classifier ready to predict.

    Attributes:
        task: ``tumour_type``, ``grade``, ``idh`` or ``mgmt``.
        name: registered model name.
        version: registry version.
        model: the calibrated classifier.
        ood: the out-of-distribution detector.
        spec: the parsed ``spec.json``.
    """

    task: str
    name: str
    version: str
    model: Any
    ood: OodDetector
    spec: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        """Input features of the classifier, in column order."""
        return list(self.spec["feature_names"])

    @property
    def ood_feature_names(self) -> list[str]:
        """Input features of the OOD detector, in column order."""
        return list(self.spec["ood_feature_names"])

    @property
    def classes(self) -> list[Any]:
        """Class labels in the order of ``predict_proba`` columns."""
        return list(self.spec["classes"])


def save_skops(obj: Any, path: Path) -> None:
    """Save a scikit-learn object with skops."""
    import skops.io as sio

    sio.dump(obj, path)


def load_skops(path: Path) -> Any:
    """Load a skops file, trusting only scikit-learn / numpy / scipy types.

    Raises:
        ClassifierNotAvailableError: the file holds another type (named) or is unreadable.
    """
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises several types for a corrupt file
        raise ClassifierNotAvailableError(f"{path} is not a readable skops file: {exc}") from exc
    refused = [name for name in untrusted if not name.startswith(_TRUSTED_PREFIXES)]
    if refused:
        raise ClassifierNotAvailableError(f"{path} holds types that are not trusted: {refused}")
    return sio.load(path, trusted=untrusted)


def load_folder(folder: Path, *, task: str, name: str, version: str) -> LoadedClassifier:
    """Load a classifier folder.

    Raises:
        ClassifierNotAvailableError: a file is missing, unsafe or the spec is for another task.
    """
    missing = [f for f in LOAD_FILES if not (folder / f).is_file()]
    if missing:
        raise ClassifierNotAvailableError(f"classifier folder {folder} lacks {missing}")
    spec = json.loads((folder / "spec.json").read_text())
    if spec.get("task") != task:
        raise ClassifierNotAvailableError(
            f"{folder / 'spec.json'} is for task {spec.get('task')!r}, expected {task!r}"
        )
    ood_state = spec["ood"]
    thresholds = [float(v) for v in ood_state["statistic_thresholds"]]
    detector = OodDetector(
        transform=load_skops(folder / "ood.skops"),
        components=int(ood_state["components"]),
        statistic_thresholds=(thresholds[0], thresholds[1], thresholds[2]),
        threshold=float(ood_state["threshold"]),
        quantile=float(ood_state["quantile"]),
        class_means=np.asarray(ood_state["class_means"], dtype=np.float64),
        within_precision=np.asarray(ood_state["within_precision"], dtype=np.float64),
    )
    return LoadedClassifier(
        task=task,
        name=name,
        version=version,
        model=load_skops(folder / "model.skops"),
        ood=detector,
        spec=spec,
    )


def register_folder(
    settings: Settings, folder: Path, *, name: str, alias: str, run_id: str | None = None
) -> str:
    """Register a classifier folder as a new version of ``name`` and point ``alias`` at it.

    Returns:
        The new version number.

    Raises:
        ClassifierNotAvailableError: the folder lacks a file.
    """
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise ClassifierNotAvailableError(f"classifier folder {folder} lacks {missing}")
    spec = json.loads((folder / "spec.json").read_text())
    checksums = {tag: file_digest(folder / file_name) for file_name, tag in CHECKSUM_TAGS.items()}
    return register_version(
        settings,
        folder,
        name=name,
        alias=alias,
        files=[f for f in MODEL_FILES + OPTIONAL_FILES if (folder / f).is_file()],
        tags={
            **checksums,
            "training_data": str(spec.get("training_data", "unknown")),
            "task": str(spec.get("task")),
        },
        run_id=run_id,
        experiment=REGISTRATION_EXPERIMENT,
    )


def ensure_bundled_classifiers(settings: Settings) -> dict[str, str]:
    """Register each bundled classifier (``settings.classifiers.bundled_dir/<task>``) whose
    ``name@alias`` is not in the registry yet; tasks without a bundled folder are skipped.

    Returns:
        Task -> the version its alias points to.
    """
    client = client_for(settings)
    config = settings.classifiers
    versions: dict[str, str] = {}
    for task, name in config.model_names.items():
        existing = version_by_alias(client, name, config.alias)
        if existing is not None:
            versions[task] = str(existing.version)
            continue
        folder = config.bundled_dir / task
        if not (folder / "model.skops").is_file():
            logger.info("no bundled classifier for %s in %s", task, folder)
            continue
        versions[task] = register_folder(settings, folder, name=name, alias=config.alias)
    return versions


def resolve_classifier(settings: Settings, task: str) -> LoadedClassifier:
    """Download ``<name>@<alias>`` of ``task`` once per version and load it (cached).

    Raises:
        ClassifierNotAvailableError: no such alias, a checksum mismatch or unsafe files.
    """
    config = settings.classifiers
    if task not in config.model_names:
        raise ClassifierNotAvailableError(f"no model name configured for task {task!r}")
    name = config.model_names[task]
    version = version_by_alias(client_for(settings), name, config.alias)
    if version is None:
        raise ClassifierNotAvailableError(
            f"model not installed: registry has no {name}@{config.alias} (run `cerebrascan "
            "registry ensure-default`)"
        )
    key = (settings.tracking_uri, name, str(version.version), version.tags.get("model_sha256"))
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        folder = cached_version_folder(settings, name, version, "model.skops", "model_sha256")
        mismatches = checksum_mismatches(folder, version, CHECKSUM_TAGS)
        if mismatches:
            raise ClassifierNotAvailableError(
                f"{name} version {version.version}: {mismatches[0]} checksum differs from the "
                "registry tag"
            )
        loaded = load_folder(folder, task=task, name=name, version=str(version.version))
        _loaded[key] = loaded
        return loaded
