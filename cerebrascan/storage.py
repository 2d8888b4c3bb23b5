"""S3 storage: the DVC remote of versioned data and the MLflow artefact store (``storage``).

Admins push with ``dvc push`` using credentials of ``docs/iam/dvc-admin.json``; GPU machines
``dvc pull`` with ``docs/iam/dvc-readonly.json``. Credentials come from boto3's usual chain
(environment, instance role, ``~/.aws``) and are never written to a config file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cerebrascan.settings import StorageSettings

logger = logging.getLogger(__name__)


def configure_dvc_remote(
    storage: StorageSettings, repo_dir: Path, *, remote_name: str = "storage"
) -> None:
    """Make ``storage.dvc_remote_url`` the default remote of the DVC repository ``repo_dir``.

    The endpoint and region go to the repository's shared config (``.dvc/config``), so every
    clone uses the same bucket; credentials stay out of it.

    Raises:
        ValueError: ``storage.dvc_remote_url`` is not set.
    """
    if not storage.dvc_remote_url:
        raise ValueError("storage.dvc_remote_url is not set (e.g. s3://bucket/dvc)")
    from dvc.repo import Repo

    remote: dict[str, str] = {"url": storage.dvc_remote_url}
    if storage.s3_endpoint_url:
        remote["endpointurl"] = storage.s3_endpoint_url
    if storage.s3_region:
        remote["region"] = storage.s3_region
    with Repo(str(repo_dir)) as repo, repo.config.edit("repo") as config:
        config["remote"][remote_name] = remote
        config["core"]["remote"] = remote_name
    logger.info("DVC remote %s -> %s", remote_name, storage.dvc_remote_url)


def apply_mlflow_s3_environment(storage: StorageSettings) -> None:
    """Point MLflow's S3 artefact client at ``storage.s3_endpoint_url`` (MLflow reads env only).

    An explicit ``MLFLOW_S3_ENDPOINT_URL`` in the environment wins.
    """
    if storage.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", storage.s3_endpoint_url)
    if storage.s3_region:
        os.environ.setdefault("AWS_DEFAULT_REGION", storage.s3_region)


def experiment_artifact_location(storage: StorageSettings, experiment: str) -> str | None:
    """``<mlflow_artifact_root>/<experiment>`` when artefacts go to S3, else None."""
    if not storage.mlflow_artifact_root:
        return None
    return f"{storage.mlflow_artifact_root.rstrip('/')}/{experiment}"
