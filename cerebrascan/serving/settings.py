"""Settings of serving at scale: API keys, async jobs, logs and S3 storage.

They are nested into :class:`cerebrascan.settings.Settings` as ``auth``, ``jobs``, ``logging`` and
``storage`` (env ``CEREBRASCAN_AUTH__ENABLED``, ``CEREBRASCAN_JOBS__RESULT_RETENTION_S``, ...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

Role = Literal["reader", "admin"]

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEFAULT_TENANT = "default"  # cerebrascan.store.models.DEFAULT_TENANT (checked by tests)


class ApiKeyEntry(BaseModel):
    """One API key, stored as the SHA-256 of the key (``cerebrascan apikey create`` prints it).

    A key is 256 random bits, so an unsalted fast hash cannot be reversed by guessing; a slow
    password hash (scrypt, argon2) would only add latency to every request.
    """

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64, description="Who holds the key (logged).")
    role: Role = Field(description="reader: analyse and read studies; admin: also /admin.")
    sha256: str = Field(description="Hex SHA-256 of the key.")
    tenant: str = Field(
        default=DEFAULT_TENANT,
        pattern=TENANT_PATTERN,
        description="The site or project the key belongs to: its studies, patients, reports, "
        "views and jobs are its own; another tenant's ids answer 404 like unknown ones.",
    )

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
        default=False,
        description="Serve GET /metrics without a key when auth is on (an opt-out for "
        "scrapers that cannot send one; labels hold route templates, never ids). False: "
        "/metrics needs a key (any role).",
    )

    allow_open_network: bool = Field(
        default=False,
        description="Let the server start with auth off on a non-loopback address (the HTTP "
        "host or grpc.host); only for a network where every client is trusted. False: such a "
        "start is refused with a message naming the address.",
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
    max_queued: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="Most jobs waiting or running at once; POST /analyze/submit (and "
        "/analyze/retry) beyond it answers 429 with a message. Each job holds its uploads in "
        "the task store until it expires.",
    )


class RetentionSettings(BaseModel):
    """How long stored studies are kept (``cerebrascan.serving.retention``)."""

    model_config = {"extra": "forbid"}

    study_days: int | None = Field(
        default=None,
        ge=1,
        le=100 * 365,
        description="Delete stored studies (record, label map, artefacts, views) analysed more "
        "than this many days ago, at start and every sweep_interval_s; unset keeps them.",
    )
    sweep_interval_s: int = Field(
        default=3600, ge=60, description="Seconds between two retention sweeps."
    )


class LogSettings(BaseModel):
    """Server log format (``cerebrascan.serving.logs``)."""

    model_config = {"extra": "forbid"}

    format: Literal["json", "text"] = Field(
        default="json", description="json: one object per line with the request id."
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")


class BatchingSettings(BaseModel):
    """The runner service: a BentoML service of its own that batches tiles across cases.

    With ``remote_runner`` on, ``bentoml serve service:CerebraScan`` starts two services: the
    front (decode, preprocess, postprocess, analyzers, store) and the runner (tiles, mirror TTA
    and the network), linked by ``bentoml.depends``. Each case crosses that boundary once.
    """

    model_config = {"extra": "forbid"}

    remote_runner: bool = Field(
        default=True,
        description="Run the network in its own BentoML service with a batchable API; False "
        "runs it in the front service's process (one case at a time).",
    )
    max_batch_size: int = Field(
        default=4, ge=1, le=64, description="Most cases one runner call may hold."
    )
    max_latency_ms: int = Field(
        default=120_000,
        ge=100,
        description="BentoML's latency budget for a batched runner call (queueing plus work).",
    )
    volume_dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="dtype of the preprocessed volume sent to the runner service. float16 "
        "halves the transfer but rounds the network input (see docs/serving.md).",
    )
    probability_dtype: Literal["float16", "float32"] = Field(
        default="float16",
        description="dtype of the class probabilities the runner service returns. float32 "
        "doubles the download and keeps the labels bit-identical to the in-process runner.",
    )
    workers: int = Field(default=1, ge=1, le=16, description="Runner service processes.")
    front_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Threads of the front service's sync APIs: studies preprocessed, "
        "postprocessed and analysed at once per worker (BentoML's default is 1).",
    )
    runner_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="URL of a runner service deployed on its own (`bentoml serve "
        "runner:CerebraScanRunner`, e.g. http://cerebrascan-runner:3000 on Kubernetes): the "
        "front sends each case there (JSON, arrays as base64) instead of starting one itself. "
        "Unset: `bentoml serve service:CerebraScan` starts it beside the front.",
    )
    runner_token: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Shared secret of the front and a runner service deployed on its own: the "
        "front sends it as Authorization: Bearer, the runner refuses any other request but "
        "its health checks and /metrics (401). Required with runner_url and by runner.py.",
    )

    @model_validator(mode="after")
    def _runner_url_needs_token(self) -> BatchingSettings:
        if self.runner_url is not None:
            if not self.remote_runner:
                raise ValueError("batching.runner_url is set but batching.remote_runner is false")
            if self.runner_token is None:
                raise ValueError(
                    "batching.runner_url needs batching.runner_token, the secret the runner "
                    "service checks"
                )
        return self


class GrpcSettings(BaseModel):
    """The Open Inference Protocol (KServe v2 / Triton) gRPC endpoint of the front service."""

    model_config = {"extra": "forbid"}

    port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="TCP port of the gRPC server; 0 disables it.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the gRPC server binds: loopback by default; 0.0.0.0 to serve "
        "other machines (then auth.enabled, or auth.allow_open_network, is required).",
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the gRPC server; with tls_key_file the port "
        "speaks TLS. Unset: plaintext (keep it on loopback or behind a TLS ingress).",
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle: when set, gRPC clients must present a certificate it "
        "signed (mutual TLS). Needs tls_cert_file.",
    )
    max_message_mb: float = Field(
        default=512.0, gt=0, description="Largest gRPC message accepted or sent, in MB."
    )
    threads: int = Field(default=4, ge=1, le=64, description="gRPC worker threads.")
    model_name: str = Field(
        default="cerebrascan-segmentation",
        description="Model name clients use in ModelInfer / ModelMetadata / ModelReady.",
    )

    @model_validator(mode="after")
    def _tls_files_together(self) -> GrpcSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("grpc.tls_cert_file and grpc.tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("grpc.tls_client_ca_file needs grpc.tls_cert_file and tls_key_file")
        return self


class HealthSettings(BaseModel):
    """What ``/readyz`` checks, and when a broken engine restarts its process
    (``runners.engine_check``)."""

    model_config = {"extra": "forbid"}

    readiness_probe_ttl_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="/readyz runs the reference tile through the engine (in the runner service "
        "when there is one) at most once per this many seconds and answers from that probe "
        "in between.",
    )
    sticky_engine_failures: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Consecutive engine failures after which the runner service process exits "
        "non-zero (exit code 75) so its supervisor restarts it; an unrecoverable GPU fault "
        "(illegal memory access, lost context) exits at once.",
    )


class BoundSettings(BaseModel):
    """Bounds on the work of one request and of the server as a whole
    (``cerebrascan.serving.limits``)."""

    model_config = {"extra": "forbid"}

    request_deadline_s: float = Field(
        default=540.0,
        gt=0,
        le=3600,
        description="Whole-request deadline of an analysis, below the 600 s HTTP request "
        "timeout: each analyzer's time limit is min(its own, the time left); analyzers not "
        "started by then are skipped with the reason.",
    )
    max_concurrent_analyses: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Analyses running at once in a worker, HTTP /analyze* and gRPC "
        "ModelInfer sharing one limit; beyond it a request waits up to queue_wait_s, then "
        "answers 429 (gRPC RESOURCE_EXHAUSTED) with a message.",
    )
    queue_wait_s: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description="How long a request waits for a free analysis slot before it is refused.",
    )
    array_pool_mb: float = Field(
        default=512.0,
        ge=0,
        le=65536,
        description="Memory a worker keeps between studies for its whole-study arrays (the "
        "decoded study, the probabilities on its grid: blocks of 32 MiB and more), in MiB, "
        "handed out again instead of fresh pages; 0 turns the pool off. Bounded: blocks over "
        "it are given back to the system.",
    )
    max_request_memory_mb: float = Field(
        default=1024.0,
        gt=0,
        description="Most memory the images of one NIfTI request may declare in their headers "
        "(voxels x max(bytes per voxel, 4) summed over the contrasts), in MiB; over it: 413 "
        "naming the sizes, before any voxel is read.",
    )
