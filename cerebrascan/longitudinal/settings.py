"""Response criteria and limits of the longitudinal analysis (``longitudinal``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LongitudinalSettings(BaseModel):
    """Volumetric response criteria and limits of the ``delta`` analyzer and the patient
    timeline (see ``docs/longitudinal.md`` for the defaults' sources)."""

    model_config = {"extra": "forbid"}

    response_region: Literal["ET", "TC", "WT"] = Field(
        default="ET",
        description="Region whose volume decides the response category (mRANO: enhancing).",
    )
    partial_response_change: float = Field(
        default=-0.65,
        gt=-1.0,
        lt=0.0,
        description="Relative volume change vs baseline at or below which a study is a partial "
        "response (-0.65: the volumetric equivalent of RANO's -50 % bidimensional product).",
    )
    progression_change: float = Field(
        default=0.40,
        gt=0.0,
        description="Relative volume change vs nadir at or above which a study is progression "
        "(+0.40: the volumetric equivalent of RANO's +25 % bidimensional product).",
    )
    complete_response_max_ml: float = Field(
        default=0.05,
        ge=0.0,
        description="Response-region volume (mL) at or below which the disease has disappeared.",
    )
    new_lesion_min_ml: float = Field(
        default=0.5,
        gt=0.0,
        description="Smallest new tumour component (mL, 26-connected whole tumour, away from "
        "every prior tumour) counted as a new lesion (a 10 mm sphere is 0.52 mL).",
    )
    new_lesion_margin_mm: float = Field(
        default=3.0,
        ge=0.0,
        description="A current component within this distance of the registered prior tumour "
        "is growth of that tumour, not a new lesion.",
    )
    max_priors: int = Field(
        default=20, ge=1, le=500, description="Earlier studies of a patient handed to analyzers."
    )
    registration_modality: Literal["t1n", "t1c", "t2w", "t2f"] = Field(
        default="t1n",
        description="Modality stored with each study and used to register visits.",
    )
    registration_spacing_mm: float = Field(
        default=2.0, gt=0.0, le=8.0, description="Grid of the rigid registration (mm)."
    )
