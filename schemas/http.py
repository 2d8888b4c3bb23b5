"""Bodies of the mounted HTTP routes that are not findings: errors and model promotion.

The routes themselves build plain JSON; these models are their contract in the served OpenAPI
spec (``cerebrascan/serving/http/openapi.py``) and in the tests that compare the two.
"""

from __future__ import annotations

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
