"""Request options and response of ``POST /analyze``."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, field_validator

from schemas.analyzers import AnalyzerOutcome
from schemas.dicom import DicomAnalysis

ISO_DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EARLIEST_STUDY_DATE = date(1900, 1, 1)
MAX_COMMENT_CHARS = 1000
RESEARCH_USE_NOTICE = (
    "Research use only. The default model was trained on synthetic phantoms, not patients; "
    "its output is not a clinical finding."
)


def research_notice_for(name: str, version: str, training_data: str) -> str:
    """The research-use notice of an answer from model ``name`` ``version``, naming what it was
    trained on (the registry's ``training_data`` tag, from the model card)."""
    return (
        f"Research use only. The served model ({name} version {version}) was trained on "
        f"{training_data}; it is not validated on patients and its output is not a clinical "
        "finding."
    )


class AnalyzeOptions(BaseModel):
    """Optional JSON ``options`` field of ``POST /analyze``."""

    # an error names the field, never the value: a comment or patient id may identify someone
    model_config = {"extra": "forbid", "hide_input_in_errors": True}

    mirror_tta: bool | None = Field(
        default=None, description="Mirror test-time augmentation; default from settings."
    )
    analyzers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per analyzer name (see each analyzer's options_schema at "
        "GET /plugins); an unknown analyzer name is refused.",
    )
    patient_id: str | None = Field(
        default=None,
        description="Pseudonymous patient id (e.g. 'PAT-0001'), so that studies of one patient "
        "can be followed over time. A name-like id is stored as a keyed hash or refused.",
    )
    study_date: date | None = Field(
        default=None, description="Acquisition date of the study, ISO YYYY-MM-DD."
    )
    skull_stripped: bool | None = Field(
        default=None,
        description="The images are already skull-stripped (POST /analyze/dicom); None: true "
        "for NIfTI uploads, false for DICOM (brain extraction runs when configured).",
    )
    deidentify: bool | None = Field(
        default=None,
        description="De-identify a DICOM study (POST /analyze/dicom): PS3.15 basic profile on "
        "the kept headers and the SEG / SR / PDF, UIDs remapped by a keyed hash; None: the "
        "server's dicom.deidentify, which a request may turn on but not off.",
    )
    comment: str | None = Field(
        default=None,
        description="Free text about the study (at most 1000 characters). Untrusted data: an "
        "LLM report writer sees it as quoted data only; it is not echoed, logged or put in "
        "the findings.",
    )

    @field_validator("comment")
    @classmethod
    def _short_comment(cls, value: str | None) -> str | None:
        # the message gives the length, not the text (it may identify a patient)
        if value is not None and len(value) > MAX_COMMENT_CHARS:
            raise ValueError(
                f"comment has {len(value)} characters, over the limit of {MAX_COMMENT_CHARS}"
            )
        if value is None:
            return None
        return value.strip() or None

    @field_validator("study_date", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> object:
        if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
            parsed = value
        elif isinstance(value, str) and ISO_DATE_PATTERN.match(value):
            try:
                parsed = date.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(f"study_date {value!r} is not a valid date: {exc}") from None
        else:
            raise ValueError(f"study_date {str(value)[:40]!r} is not an ISO date (YYYY-MM-DD)")
        if isinstance(parsed, date):
            latest = datetime.now(UTC).date() + timedelta(days=1)
            if not EARLIEST_STUDY_DATE <= parsed <= latest:
                raise ValueError(
                    f"study_date {parsed.isoformat()!r} is outside {EARLIEST_STUDY_DATE} .. "
                    f"{latest} (today, UTC, plus one day)"
                )
        return parsed


class Geometry(BaseModel):
    """Geometry of the input images (shared by all four modalities)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    affine: list[list[float]] = Field(description="4x4 voxel-to-scanner-RAS matrix (mm).")
    orientation: str = Field(description="Axis codes of the voxel axes, e.g. 'LAS'.")


class RegionVolumes(BaseModel):
    """Volumes in millilitres of BraTS labels and regions."""

    NETC: float
    SNFH: float
    ET: float
    TC: float
    WT: float


class ModelInfo(BaseModel):
    """Which registry model version produced the segmentation and how it ran."""

    name: str
    version: str
    alias: str
    runner: str
    providers: list[str]
    precision: str = Field(
        default="fp32", description="Arithmetic the network ran in (fp32, fp16 or bf16)."
    )
    precision_note: str | None = Field(
        default=None,
        description="Why the configured reduced precision was not used (the guard's finding).",
    )
    mirror_tta: bool
    trained_on: str = Field(description="Training data of the model, from its model card.")
    min_component_ml: float = Field(description="Tumour islands under this volume were removed.")
    removed_islands: int = Field(description="How many tumour islands were removed.")


class AnalyzeResponse(BaseModel):
    """Findings of one analysed study."""

    study_id: str
    created_at: datetime
    model: ModelInfo
    geometry: Geometry
    volumes_ml: RegionVolumes
    timings_ms: dict[str, float] = Field(description="Wall time per pipeline stage.")
    segmentation_url: str = Field(description="Where the label map (NIfTI) can be fetched.")
    analyzers: dict[str, AnalyzerOutcome] = Field(
        default_factory=dict,
        description="Outcome of every installed analyzer, in the order they ran.",
    )
    dicom: DicomAnalysis | None = Field(
        default=None,
        description="DICOM studies (POST /analyze/dicom): the series chosen per contrast and the "
        "rule that chose it, the grids, resampling or registration, the brain mask.",
    )
    notice: str = RESEARCH_USE_NOTICE
