"""The MLflow model registry: register model folders, resolve an alias to a local folder.

A model folder holds ``model.onnx``, ``model_spec.json`` (:class:`schemas.model_spec.ModelSpec`),
``model_card.md`` and ``metrics.json``. Registration logs the folder as run artefacts and points
a new registry version at them; serving resolves ``name@alias`` and downloads the folder once
into a cache keyed by name and version, checking the ONNX file's SHA-256.

One flow for every model kind: :func:`register_version` registers, :func:`version_by_alias`
looks an alias up, :func:`cached_version_folder` downloads and :func:`checksum_mismatches`
checks. The segmentation models here and the classifiers
(:mod:`cerebrascan.classifiers.model_registry`) differ only in their files and tags.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cerebrascan.settings import Settings
from cerebrascan.storage import apply_mlflow_s3_environment, experiment_artifact_location
from runners.engine_cache import file_digest
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.onnx", "model_spec.json", "model_card.md", "metrics.json")
OPTIONAL_MODEL_FILES = (
    "precisions.json",
    "model.int8.xml",
    "model.int8.bin",
    "int8_calibration.json",
)
"""Registered with the version when the folder has them: the held-out record that admits bf16 /
int8 (runners/precision_record.py) and the int8 network it may name."""
REGISTRATION_EXPERIMENT = "cerebrascan-registry"
LAST_GOOD_FILE = "last_good.json"
"""Per model name in the model cache: alias -> the version last resolved from the registry
with a good checksum (or promoted), served when the registry is unreachable at start."""
REGISTRY_CONNECT_TIMEOUT_S = 5.0
"""How long a start waits to reach an HTTP registry before it serves the cached version
(MLflow's own client would retry for minutes)."""


class ModelNotAvailableError(RuntimeError):
    """The registry has no version for the requested name and alias, or its files are bad."""


@dataclass(frozen=True)
class ResolvedModel:
    """A registry version downloaded to a local folder."""

    name: str
    version: str
    alias: str
    folder: Path
    spec: ModelSpec
    training_data: str
    registry_warning: str | None = None
    """Set when the registry could not be reached and this is the last cached good version."""

    @property
    def onnx_path(self) -> Path:
        """The network file."""
        return self.folder / "model.onnx"


def client_for(settings: Settings) -> MlflowClient:
    """An MLflow client on the configured tracking/registry URI (creating a sqlite folder).

    MLflow's global URI is left alone: ``mlflow.set_tracking_uri`` also exports
    ``MLFLOW_TRACKING_URI``, which would leak into every later :class:`Settings`.
    """
    apply_mlflow_s3_environment(settings.storage)
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, settings: Settings) -> str:
    """Id of experiment ``name``, created with its artefacts under ``settings.artifact_root``
    (or ``storage.mlflow_artifact_root``/``name`` on S3 when that is set)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    s3_location = experiment_artifact_location(settings.storage, name)
    if s3_location is not None:
        return str(client.create_experiment(name, artifact_location=s3_location))
    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    return str(client.create_experiment(name, artifact_location=settings.artifact_root.as_uri()))


def check_model_folder(folder: Path) -> ModelSpec:
    """Validate a model folder and return its spec.

    Raises:
        ModelNotAvailableError: a required file is missing or the spec is invalid.
    """
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelNotAvailableError(f"model folder {folder} lacks {missing}")
    try:
        spec = ModelSpec.model_validate_json((folder / "model_spec.json").read_text())
    except ValueError as exc:
        raise ModelNotAvailableError(f"{folder / 'model_spec.json'} is invalid: {exc}") from exc
    weights = spec.torch_network.weights if spec.torch_network else []
    missing = [f for f in weights if not (folder / f).is_file()]
    if missing:
        raise ModelNotAvailableError(f"model folder {folder} lacks the torch weights {missing}")
    return spec


def registration_run(
    client: MlflowClient,
    settings: Settings,
    name: str,
    run_id: str | None,
    experiment: str = REGISTRATION_EXPERIMENT,
) -> str:
    """``run_id`` if this registry's store has it, else a new finished run in ``experiment``."""
    if run_id is not None:
        try:
            client.get_run(run_id)
        except MlflowException:
            logger.warning("run %s is not in this registry's store; using a new run", run_id)
            run_id = None
    if run_id is None:
        experiment_id = ensure_experiment(client, experiment, settings)
        run_id = client.create_run(experiment_id, run_name=f"register-{name}").info.run_id
        client.set_terminated(run_id)
    return run_id


def ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    """Create the registered model ``name`` unless it exists."""
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def register_version(
    settings: Settings,
    folder: Path,
    *,
    name: str,
    alias: str,
    files: Sequence[str],
    tags: Mapping[str, str],
    run_id: str | None = None,
    experiment: str = REGISTRATION_EXPERIMENT,
) -> str:
    """Log ``files`` of ``folder`` as run artefacts, make them a new version of ``name`` and
    point ``alias`` at it: the one registration flow of every model kind.

    The artefacts go under ``model/`` of the run; the folder's ``model_card.md`` becomes the
    registered model's description (when it is created) and the version's (first 5000
    characters).

    Args:
        settings: where the registry is.
        folder: the model folder, checked by the caller; it must hold ``model_card.md``.
        name: registered model name.
        alias: alias to set on the new version (e.g. ``champion``).
        files: names of the folder's files to log, in order.
        tags: version tags (checksums the download is checked against, training data, ...).
        run_id: the MLflow run that produced the model; a registration run is made if None.
        experiment: experiment of a registration run.

    Returns:
        The new version number as a string.
    """
    card = (folder / "model_card.md").read_text()
    client = client_for(settings)
    run_id = registration_run(client, settings, name, run_id, experiment)
    for file_name in files:
        client.log_artifact(run_id, str(folder / file_name), artifact_path="model")
    artifact_uri = client.get_run(run_id).info.artifact_uri
    ensure_registered_model(client, name, card)
    version = client.create_model_version(
        name,
        source=f"{artifact_uri}/model",
        run_id=run_id,
        tags=dict(tags),
        description=card[:5000],
    )
    client.set_registered_model_alias(name, alias, version.version)
    logger.info("registered %s version %s with alias %s", name, version.version, alias)
    return str(version.version)


def register_model_folder(
    settings: Settings, folder: Path, *, name: str, alias: str, run_id: str | None = None
) -> str:
    """Register ``folder`` as a new version of ``name`` and point ``alias`` at it.

    Args:
        settings: where the registry is.
        folder: a model folder (see the module docstring).
        name: registered model name.
        alias: alias to set on the new version (e.g. ``champion``).
        run_id: the MLflow run that produced the model; a registration run is made if None.

    Returns:
        The new version number as a string.

    Raises:
        ModelNotAvailableError: a required file is missing or the spec is invalid.
    """
    spec = check_model_folder(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    weights = spec.torch_network.weights if spec.torch_network else []
    return register_version(
        settings,
        folder,
        name=name,
        alias=alias,
        files=(
            *MODEL_FILES,
            *weights,
            *(name for name in OPTIONAL_MODEL_FILES if (folder / name).is_file()),
        ),
        tags={
            "onnx_sha256": file_digest(folder / "model.onnx"),
            "training_data": str(metrics.get("training_data", "unknown")),
        },
        run_id=run_id,
    )


def version_by_alias(client: MlflowClient, name: str, alias: str) -> Any | None:
    """The registry version ``name@alias`` points to, or None when there is none."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def ensure_default_model(settings: Settings) -> str:
    """Make sure ``model_name@model_alias`` exists, registering the bundled model if not.

    Returns:
        The version the alias points to.
    """
    existing = version_by_alias(client_for(settings), settings.model_name, settings.model_alias)
    if existing is not None:
        return str(existing.version)
    logger.info(
        "no %s@%s in the registry; registering the bundled model from %s",
        settings.model_name,
        settings.model_alias,
        settings.bundled_model_dir,
    )
    return register_model_folder(
        settings, settings.bundled_model_dir, name=settings.model_name, alias=settings.model_alias
    )


def resolve_model(settings: Settings) -> ResolvedModel:
    """Download ``model_name@model_alias`` into the cache (once per version) and load its spec.

    Raises:
        ModelNotAvailableError: no such alias, or the downloaded ONNX does not match its checksum.
    """
    name, alias = settings.model_name, settings.model_alias
    unreachable = registry_unreachable(settings.tracking_uri)
    if unreachable is not None:
        return cached_good_model(settings, name, alias, unreachable)
    client = client_for(settings)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            # the registry answered with a server error or not at all (after MLflow's retries)
            return cached_good_model(settings, name, alias, f"{exc.error_code}: {exc}"[:300])
        raise ModelNotAvailableError(
            f"registry {settings.tracking_uri} has no {name}@{alias}; run `cerebrascan "
            "registry ensure-default` or register a model"
        ) from exc
    model = _materialise(settings, name, version, alias)
    record_last_good(settings, model)
    return model


def registry_unreachable(uri: str, timeout_s: float = REGISTRY_CONNECT_TIMEOUT_S) -> str | None:
    """Why an HTTP(S) registry at ``uri`` cannot be reached (a TCP connect within
    ``timeout_s``), or None when it can or is not an HTTP registry (sqlite, file).

    The connect is tried first because MLflow's client retries a dead address for minutes.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port} ({type(exc).__name__}: {exc})"


def record_last_good(settings: Settings, model: ResolvedModel) -> None:
    """Remember ``model`` as the last good version of its alias in the model cache
    (``<cache>/<name>/last_good.json``, replaced atomically), with its ONNX checksum."""
    record_path = settings.model_cache_dir / model.name / LAST_GOOD_FILE
    record_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        records = json.loads(record_path.read_text())
    except (OSError, ValueError):
        records = {}
    if not isinstance(records, dict):
        records = {}
    records[model.alias] = {
        "version": model.version,
        "onnx_sha256": file_digest(model.onnx_path),
        "training_data": model.training_data,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    staging = record_path.with_name(f"{LAST_GOOD_FILE}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(records, indent=2))
    os.replace(staging, record_path)


def cached_good_model(settings: Settings, name: str, alias: str, reason: str) -> ResolvedModel:
    """The last good version of ``name@alias`` from the model cache, for a start while the
    registry cannot be reached; its ``registry_warning`` says so.

    Raises:
        ModelNotAvailableError: no version was recorded, or its cached files are missing or
            differ from the recorded checksum.
    """
    record_path = settings.model_cache_dir / name / LAST_GOOD_FILE
    try:
        record = json.loads(record_path.read_text()).get(alias)
    except (OSError, ValueError, AttributeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("version"), str):
        raise ModelNotAvailableError(
            f"registry {settings.tracking_uri} cannot be reached ({reason}) and the model "
            f"cache {settings.model_cache_dir} holds no good version of {name}@{alias}"
        )
    version = record["version"]
    folder = settings.model_cache_dir / name / version
    onnx = folder / "model.onnx"
    if not onnx.is_file() or file_digest(onnx) != record.get("onnx_sha256"):
        raise ModelNotAvailableError(
            f"registry {settings.tracking_uri} cannot be reached ({reason}) and the cached "
            f"{name} version {version} is missing or differs from its recorded checksum"
        )
    spec = check_model_folder(folder)
    warning = (
        f"The model registry could not be reached at start ({reason}); serving the last "
        f"cached good version {version} of {name}@{alias} (recorded {record.get('recorded_at')})."
    )
    logger.warning("%s", warning)
    return ResolvedModel(
        name=name,
        version=version,
        alias=alias,
        folder=folder,
        spec=spec,
        training_data=str(record.get("training_data", "unknown")),
        registry_warning=warning,
    )


def resolve_model_version(settings: Settings, name: str, version: str) -> ResolvedModel:
    """Download one numbered version of ``name`` (the runner service follows promotions).

    Raises:
        ModelNotAvailableError: no such version, or its files are bad.
    """
    client = client_for(settings)
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ModelNotAvailableError(
            f"registry {settings.tracking_uri} has no {name} version {version}"
        ) from exc
    aliases = list(getattr(found, "aliases", []) or [])
    return _materialise(settings, name, found, aliases[0] if aliases else f"v{version}")


def cached_version_folder(
    settings: Settings, name: str, version: Any, key_file: str, checksum_tag: str
) -> Path:
    """The model cache folder of a registry version, downloaded (through a ``.partial``
    staging folder) unless ``key_file`` is there with the checksum in tag ``checksum_tag``.

    The caller checks the checksums again (:func:`checksum_mismatches`): a download can still
    differ from the tags.
    """
    folder = settings.model_cache_dir / name / str(version.version)
    expected = version.tags.get(checksum_tag)
    if (folder / key_file).is_file() and file_digest(folder / key_file) == expected:
        return folder
    # workers starting together download once: the others wait, then find the files
    with download_lock(folder):
        if (folder / key_file).is_file() and file_digest(folder / key_file) == expected:
            return folder
        return _download_version(settings, folder, version)


@contextmanager
def download_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock (``fcntl.flock``) on ``folder``'s download, across processes and
    threads: each holder opens the lock file itself. Released when the block ends, and by the
    kernel if the process dies."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f".{folder.name}.lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_version(settings: Settings, folder: Path, version: Any) -> Path:
    """Download a version's artefacts into ``folder`` through a ``.partial`` staging folder
    (under :func:`download_lock`)."""
    if folder.exists():
        shutil.rmtree(folder)
    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(staging), tracking_uri=settings.tracking_uri
    )
    downloaded = staging / "model" if (staging / "model").is_dir() else staging
    downloaded.rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def checksum_mismatches(folder: Path, version: Any, checksum_tags: Mapping[str, str]) -> list[str]:
    """Files of ``folder`` whose SHA-256 differs from their registry version tag.

    Args:
        folder: a downloaded version folder.
        version: the registry version (its ``tags`` hold the checksums).
        checksum_tags: file name -> the tag holding its SHA-256, in the order checked.

    Returns:
        The differing file names, in the order of ``checksum_tags`` (empty when all match).
    """
    return [
        file_name
        for file_name, tag in checksum_tags.items()
        if file_digest(folder / file_name) != version.tags.get(tag)
    ]


def _materialise(settings: Settings, name: str, version: Any, alias: str) -> ResolvedModel:
    """The version's folder in the model cache (downloaded and checked once) and its spec."""
    folder = cached_version_folder(settings, name, version, "model.onnx", "onnx_sha256")
    if checksum_mismatches(folder, version, {"model.onnx": "onnx_sha256"}):
        raise ModelNotAvailableError(
            f"{name} version {version.version}: model.onnx checksum differs from the registry tag"
        )
    spec = check_model_folder(folder)
    return ResolvedModel(
        name=name,
        version=str(version.version),
        alias=alias,
        folder=folder,
        spec=spec,
        training_data=version.tags.get("training_data", "unknown"),
    )
