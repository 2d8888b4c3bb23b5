"""Settings of the study views (``Settings.views``, env ``CEREBRASCAN_VIEWS__*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

DisplayModality = Literal["t1n", "t1c", "t2w", "t2f"]


class ViewSettings(BaseModel):
    """What the slice, montage, video and viewer routes may show (``docs/views.md``)."""

    model_config = {"extra": "forbid"}

    display_modalities: list[DisplayModality] = Field(
        default_factory=list,
        description="Contrasts kept as a display copy (uint8, windowed, the study's grid and "
        'affine only, no header text) when a study is analysed, e.g. ["t1c"]. Empty (default): '
        "no image is kept and the views draw the label map on a neutral background.",
    )
    video_fps: int = Field(default=12, ge=1, le=60, description="Frames per second of videos.")
    orbit_frames: int = Field(
        default=48, ge=8, le=360, description="Frames of one turn in orbit.mp4 / orbit.gif."
    )
