"""Response of ``GET /patients/{patient_id}/timeline``."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, Field

from schemas.analysis import RESEARCH_USE_NOTICE

ResponseCategoryName = Literal["complete_response", "partial_response", "stable", "progression"]


class TimelineResponse(BaseModel):
    """Volumetric response category of a visit, with the rule that decided it."""

    category: ResponseCategoryName = Field(description="The category.")
    reason: str = Field(description="The rule that decided it, with the figures.")
    reference_study_id: str = Field(description="The study compared with.")


class TimelineVisit(BaseModel):
    """One dated study of the patient."""

    study_id: str = Field(description="The study.")
    study_date: date = Field(description="Acquisition date.")
    days_since_baseline: int = Field(description="Days since the patient's first dated study.")
    model: str = Field(description="Model name:version that segmented the study.")
    model_differs_from_previous: bool = Field(
        description="Another model or version segmented the previous visit."
    )
    volumes_ml: dict[str, float] = Field(description="Volume per label and region, mL.")
    new_lesion: bool | None = Field(
        description="A new lesion vs the previous visit (from the study's delta analyzer); "
        "None when that analyzer did not compare it with the previous visit."
    )
    response_vs_previous: TimelineResponse | None = Field(
        description="Category against the previous visit (None for the first visit)."
    )
    response_overall: TimelineResponse | None = Field(
        description="mRANO-style category: baseline for response, nadir for progression."
    )


class Timeline(BaseModel):
    """A patient's dated studies in date order, their volumes and responses."""

    patient_id: str = Field(description="The stored (pseudonymous or hashed) patient key.")
    response_region: str = Field(description="Region whose volume decides the response.")
    thresholds: dict[str, float] = Field(description="The response thresholds in force.")
    visits: list[TimelineVisit] = Field(description="Dated studies, oldest first.")
    series_ml: dict[str, list[float]] = Field(
        description="Per region, the volumes of the visits in order (for plotting)."
    )
    undated_study_ids: list[str] = Field(
        description="Studies without a study_date: stored, but not on the timeline."
    )
    notes: list[str] = Field(description="Caveats of this timeline.")
    notice: str = RESEARCH_USE_NOTICE
