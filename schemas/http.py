"""Bodies of the mounted HTTP routes that are not findings: errors and model promotion.

The routes themselves build plain JSON; these models are their contract in the served OpenAPI
spec (``cerebrascan/serving/http/openapi.py``) and in the tests that compare the two.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """A refused request: the message names the field or value at fault."""

    error: str = Field(description="What was wrong, naming the bad field or value.")


class PromoteRequest(BaseModel):
    """Body of ``POST /admin/models/promote``."""

    version: str = Field(description="Registry version to point the alias at, e.g. '3'.")
    name: str | None = Field(
        default=None,
        description="Registered model: the served segmentation model (default) or a classifier.",
    )


class PromoteResponse(BaseModel):
    """What ``POST /admin/models/promote`` did."""

    name: str = Field(description="The registered model promoted.")
    alias: str = Field(description="The alias moved (model_alias or classifiers.alias).")
    version: str = Field(description="The version now served.")
    previous_version: str | None = Field(
        description="The version the alias pointed at before (None: it pointed nowhere)."
    )


class RenderJobRequest(BaseModel):
    """Body of ``POST /studies/{id}/views/jobs``: a long view rendered in the background."""

    view: Literal["mesh", "flythrough", "orbit"] = Field(description="The view to render.")
    format: str = Field(description="mesh: glb, stl or obj; flythrough and orbit: mp4 or gif.")
    query: dict[str, str] = Field(
        default_factory=dict,
        description="The view route's query parameters, e.g. {'region': 'ET'} or "
        "{'plane': 'axial', 'mode': 'rgb'}.",
    )


class RenderJobStatus(BaseModel):
    """A render job: ``result_url`` serves the file from the cache once ``status`` is done."""

    job_id: str
    study_id: str
    status: Literal["queued", "running", "done", "failed"]
    result_url: str = Field(description="The view's GET route with the job's parameters.")
    error: str | None = Field(default=None, description="Why it failed (no patient data).")
    error_status: int | None = Field(
        default=None, description="The status the view's GET route would have answered."
    )


class DeletionResponse(BaseModel):
    """What ``DELETE /studies/{id}`` or ``DELETE /patients/{id}`` removed."""

    deleted_studies: int = Field(
        description="Studies whose record, label map, report inputs, artefacts, display "
        "copies and cached views were removed."
    )
