"""Contracts of the cohort routes: ``POST /cohorts`` and ``GET /cohorts/{id}``."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

LOCATION = re.compile(r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/\S+|/\S+)$")
"""Where the Ray cluster reads or writes: ``s3://bucket/key`` or an absolute path it shares."""


class CohortSubmission(BaseModel):
    """Body of ``POST /cohorts`` (admin): run ``cerebrascan cohort run`` on the Ray cluster."""

    model_config = {"extra": "forbid"}

    manifest_uri: str = Field(description="CSV or Parquet manifest: s3://bucket/key or /path.")
    output_uri: str = Field(description="Output prefix: s3://bucket/prefix or /path.")
    model: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,128}(@[A-Za-z0-9._-]{1,64})?$",
        description="name@alias of the segmentation model; default: the served one.",
    )
    actors: int | None = Field(default=None, ge=1, le=4096, description="Most model actors.")
    gpus_per_actor: float | None = Field(default=None, ge=0, le=8, description="GPUs per actor.")

    @field_validator("manifest_uri", "output_uri")
    @classmethod
    def _location(cls, value: str) -> str:
        if not LOCATION.match(value) or ".." in value.split("/"):
            raise ValueError(
                f"expected s3://bucket/key or an absolute path the cluster shares, got "
                f"{value[:80]!r}"
            )
        return value


class CohortSubmitted(BaseModel):
    """Answer of ``POST /cohorts`` (202): the cohort's id and where to follow it."""

    id: str = Field(description="cohort-<16 hex>: the Ray job's submission id.")
    status_url: str
    results_url: str


class CohortStatus(BaseModel):
    """Answer of ``GET /cohorts/{id}``."""

    id: str
    status: Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"] = Field(
        description="The Ray job's status."
    )
    message: str | None = Field(default=None, description="Ray's message about the job.")
    output_uri: str
    progress: dict[str, Any] | None = Field(
        default=None, description="progress.json: done, failed, per_second, eta_s (when written)."
    )
    summary: dict[str, Any] | None = Field(
        default=None, description="summary.json once the run has written its table."
    )
    results_url: str = Field(description="GET it for results.parquet once the job succeeded.")
