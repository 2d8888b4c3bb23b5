"""Bounds on what one uploaded study may make the server read (``limits``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LimitSettings(BaseModel):
    """Bounds on what one request may make the server read and allocate."""

    max_upload_mb: float = Field(default=512.0, gt=0, description="Whole request body, in MB.")
    max_voxels: int = Field(
        default=400 * 400 * 400, gt=0, description="Voxels per image a header may declare."
    )
