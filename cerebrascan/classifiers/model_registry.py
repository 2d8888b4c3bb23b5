"""Classifier model folders: save, load safely, register in and resolve from MLflow (I/O).

A folder (``models/classifiers/<task>/``) holds:

* ``model.skops``: the calibrated scikit-learn classifier, saved with skops (no pickle);
* ``ood.skops``: the out-of-distribution detector's scikit-learn transform;
* ``spec.json``: task, classes, feature names, OOD numbers, versions, training data;
* ``metrics.json`` and ``model_card.md`` (held-out metrics) and ``reliability.png``.

Loading never unpickles and runs no code from the file: every type and function named
anywhere in a skops file's tree must be in :data:`ALLOWED_TYPES_FILE` (``skops_types.txt``,
the exact names found in the committed models, no prefixes); anything else, ``builtins.exec``
included, is refused with its name before skops builds an object (a model that needs a new
type is a code change: add the name there; ``tests/test_trust_models.py`` checks the list is
exactly what the committed models name).
Registration is :func:`cerebrascan.registry.register_version` (the flow of every model kind):
MLflow client only, one registered model per task with alias ``champion``, the skops files'
SHA-256 as version tags checked after download.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
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
ALLOWED_TYPES_FILE = Path(__file__).with_name("skops_types.txt")
"""One fully qualified type or function name a line: all a classifier file may name."""
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


@lru_cache(maxsize=1)
def allowed_skops_types() -> frozenset[str]:
    """The names of :data:`ALLOWED_TYPES_FILE` (blank lines and ``#`` comments skipped)."""
    lines = ALLOWED_TYPES_FILE.read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _node_types(node: Any, seen: set[int]) -> set[str]:
    """Every ``module.name`` a skops node and its children name (skops' own audit walk,
    ``skops.io._audit.Node.get_unsafe_set``, without its default trust)."""
    import io

    from skops.io._audit import Node
    from skops.io._utils import get_module

    if id(node) in seen:
        return set()
    seen.add(id(node))
    names = {f"{node.module_name}.{node.class_name}"}
    for child in node.children.values():
        if child is None or isinstance(child, io.BytesIO | str):
            continue
        values = (
            child
            if isinstance(child, list)
            else (list(child.values()) if isinstance(child, dict) else [child])
        )
        for value in values:
            if isinstance(value, Node):
                names |= _node_types(value, seen)
            elif type(value) is type:
                names.add(f"{get_module(value)}.{value.__name__}")
            else:
                raise TypeError(f"cannot tell the type of a {type(value).__name__} node")
    return names


def skops_types(path: Path) -> set[str]:
    """Every type and function name in the skops file ``path`` (nothing is built or run).

    Raises:
        ClassifierNotAvailableError: the file is not a readable skops file.
    """
    from zipfile import ZipFile

    from skops.io._audit import get_tree
    from skops.io._utils import read_schema

    try:
        with ZipFile(path, "r") as zip_file:
            schema, load_context = read_schema(zip_file)
            tree = get_tree(schema, load_context=load_context, trusted=None)
            return _node_types(tree, set())
    except Exception as exc:  # zipfile, json and skops raise several types for a bad file
        raise ClassifierNotAvailableError(f"{path} is not a readable skops file: {exc}") from exc


def load_skops(path: Path) -> Any:
    """Load a skops file whose every type is in :func:`allowed_skops_types`.

    Raises:
        ClassifierNotAvailableError: the file names another type or function (named), or is
            unreadable.
    """
    import skops.io as sio

    found = skops_types(path)
    refused = sorted(found - allowed_skops_types())
    if refused:
        raise ClassifierNotAvailableError(
            f"{path} names types that are not trusted (not in the allow-list "
            f"{ALLOWED_TYPES_FILE.name}): {refused}"
        )
    return sio.load(path, trusted=sorted(found))


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
