"""Settings of serving at scale: API keys, async jobs, logs and S3 storage.

They are nested into :class:`cerebrascan.settings.Settings` as ``auth``, ``jobs``, ``logging`` and
``storage`` (env ``CEREBRASCAN_AUTH__ENABLED``, ``CEREBRASCAN_JOBS__RESULT_RETENTION_S``, ...).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

Role = Literal["reader", "admin"]

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")


class ApiKeyEntry(BaseModel):
    """One API key, stored as the SHA-256 of the key (``cerebrascan apikey create`` prints it).

    A key is 256 random bits, so an unsalted fast hash cannot be reversed by guessing; a slow
    password hash (scrypt, argon2) would only add latency to every request.
    """

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64, description="Who holds the key (logged).")
    role: Role = Field(description="reader: analyse and read studies; admin: also /admin.")
    sha256: str = Field(description="Hex SHA-256 of the key.")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not SHA256_HEX.match(value):
            raise ValueError("sha256 must be 64 hex characters (the hash, never the key itself)")
        return value


class AuthSettings(BaseModel):
    """API-key access control of the HTTP routes (``cerebrascan.http.auth``) and the gRPC
    methods (``cerebrascan.grpc_oip.auth``)."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(
        default=False,
        description="Require an API key on every route but the health checks; off for local "
        "development only (a warning is logged).",
    )
    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    public_metrics: bool = Field(
        default=True,
        description="Serve GET /metrics without a key (Prometheus scrapers; it holds no "
        "patient data). False: /metrics needs the admin role.",
    )

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> AuthSettings:
        if self.enabled and not self.api_keys:
            raise ValueError("auth.enabled is true but auth.api_keys is empty")
        names = [entry.name for entry in self.api_keys]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"auth.api_keys names must be unique, repeated: {duplicates}")
        return self


class JobSettings(BaseModel):
    """Async analyses (``POST /analyze/submit``, ``GET /analyze/status``, ``GET /analyze/get``)."""

    model_config = {"extra": "forbid"}

    result_retention_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="A finished job's result stays fetchable at least this long; older results "
        "are deleted when a later job finishes, and all of them when the server restarts.",
    )


class LogSettings(BaseModel):
    """Server log format (``cerebrascan.logging_config``)."""

    model_config = {"extra": "forbid"}

    format: Literal["json", "text"] = Field(
        default="json", description="json: one object per line with the request id."
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")


class StorageSettings(BaseModel):
    """S3 storage of versioned data (DVC remote) and MLflow artefacts (``docs/storage.md``).

    Credentials never live here: boto3 reads them from the environment, an instance role or
    ``~/.aws`` as usual.
    """

    model_config = {"extra": "forbid"}

    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint for non-AWS stores (MinIO, Ceph, a local test server); "
        "None: AWS.",
    )
    s3_region: str | None = Field(default=None, description="Bucket region, e.g. eu-central-1.")
    dvc_remote_url: str | None = Field(
        default=None, description="DVC remote, e.g. s3://cerebrascan-data/dvc."
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="Artefact location of experiments this project creates, e.g. "
        "s3://cerebrascan-data/mlflow; None: a folder under data_dir.",
    )

    @field_validator("dvc_remote_url", "mlflow_artifact_root")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(
            r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", value
        ):
            raise ValueError(f"expected s3://bucket[/prefix], got {value!r}")
        return value
