"""Structured radiology-style report of a stored study: ``GET /studies/{id}/report``.

Every section is built from the study's stored findings (the ``AnalyzeResponse`` JSON) at
request time; a section whose analyzer did not run, failed or is not installed says so in
``available`` / ``reason`` instead of being left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

ReportFormat = Literal["json", "md", "html", "pdf"]
WriterName = Literal["template", "llm"]
RESEARCH_USE_ONLY = "Research use only"


class SectionStatus(BaseModel):
    """Whether a section has content, and why not."""

    available: bool = Field(description="The section's analyzer produced a result.")
    reason: str | None = Field(default=None, description="Why the section is not available.")
    analyzer_version: str | None = Field(
        default=None, description="Version of the analyzer that produced the section."
    )


class Technique(BaseModel):
    """Study and technique: what was acquired and which software versions read it."""

    study_id: str
    analysed_at: datetime
    study_date: str | None = Field(default=None, description="Acquisition date, if recorded.")
    modalities: list[str] = Field(description="Input sequences (BraTS names).")
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    model_name: str
    model_version: str
    model_alias: str
    runner: str
    trained_on: str
    analyzer_versions: dict[str, str] = Field(
        description="Version of every analyzer that ran, with its status in brackets if not ok."
    )
    supplied_text_fields: list[str] = Field(
        default_factory=list,
        description="Names of free-text fields that arrived with the input. They are passed to "
        "an LLM writer as quoted data only and are not reproduced in the report.",
    )


class SubRegionFinding(BaseModel):
    """Volume of one BraTS label or region."""

    code: Literal["NETC", "SNFH", "ET", "TC", "WT"]
    name: str
    volume_ml: float


class StructureInvolvement(BaseModel):
    """An atlas structure the whole tumour overlaps."""

    name: str
    overlap_ml: float


class RanoSummary(BaseModel):
    """Bidimensional enhancing-tumour measurement."""

    slice_index: int
    longest_diameter_mm: float
    perpendicular_diameter_mm: float
    product_mm2: float
    measurable: bool


class TumourFindings(BaseModel):
    """Findings per sub-region with location and spread."""

    sub_regions: list[SubRegionFinding]
    hemisphere: Literal["left", "right", "midline"] | None = None
    lesion_count: int | None = None
    max_diameter_mm: float | None = None
    centroid_ras_mm: tuple[float, float, float] | None = None
    rano: RanoSummary | None = None
    involved_structures: list[StructureInvolvement] = Field(
        default_factory=list, description="Structures the tumour overlaps (from nogo)."
    )
    location_status: SectionStatus = Field(
        description="Whether volumetrics (location, spread) is available."
    )


class Prediction(BaseModel):
    """One statement of a classification or radiogenomics analyzer."""

    name: str = Field(description="What is predicted, e.g. 'tumour type' or 'IDH'.")
    value: str = Field(description="The predicted category or value.")
    confidence: float | None = Field(default=None, description="In [0, 1], when given.")


class ModelOpinion(BaseModel):
    """Classification or radiogenomics: predictions with their confidence, research use only."""

    status: SectionStatus
    predictions: list[Prediction] = Field(default_factory=list)
    notice: str = Field(
        default=f"{RESEARCH_USE_ONLY}: model predictions, not a diagnosis.",
        description="Shown with every prediction.",
    )


class BiopsyTargetEntry(BaseModel):
    """A proposed biopsy target (hotspot analyzer)."""

    rank: int
    ras_mm: tuple[float, float, float]
    voxel: tuple[int, int, int]
    score: float
    nearest_excluded_structure: str | None = None
    nearest_excluded_mm: float | None = None


class BiopsyTargets(BaseModel):
    """Biopsy targets section."""

    status: SectionStatus
    targets: list[BiopsyTargetEntry] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class StructureAtRisk(BaseModel):
    """A no-go structure with its distance to the tumour."""

    name: str
    risk: str
    min_distance_mm: float | None
    overlap_ml: float


class NoGoStructures(BaseModel):
    """No-go structures at risk."""

    status: SectionStatus
    highest_risk: str | None = None
    high_risk_mm: float | None = None
    moderate_risk_mm: float | None = None
    structures: list[StructureAtRisk] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ChangeItem(BaseModel):
    """One reported value of the longitudinal analyzer."""

    name: str
    value: str


class ChangeSincePrior(BaseModel):
    """Change since prior studies (read generically from the ``delta`` analyzer)."""

    status: SectionStatus
    category: str | None = Field(default=None, description="Overall category, when given.")
    items: list[ChangeItem] = Field(default_factory=list)


class QualityFlagEntry(BaseModel):
    """A quality-control flag."""

    code: str
    severity: str
    message: str


class QualitySection(BaseModel):
    """Quality flags."""

    status: SectionStatus
    passed: bool | None = None
    flags: list[QualityFlagEntry] = Field(default_factory=list)


class OverlayImage(BaseModel):
    """Key image: the slice with the largest tumour area, labels over t1c (or alone)."""

    shown: bool
    reason: str | None = Field(default=None, description="Why no image, or what it lies on.")
    url: str | None = Field(default=None, description="GET URL of the PNG.")
    slice_axis: int | None = None
    slice_index: int | None = None
    tumour_area_mm2: float | None = None
    background: Literal["t1c", "registration_reference", "labels"] | None = Field(
        default=None,
        description="What the labels lie over: t1c, the image stored for longitudinal "
        "registration, or nothing.",
    )


class GroundingMismatch(BaseModel):
    """A claim of the LLM's text that the findings do not support, without its text (the
    endpoint's words never reach a report)."""

    kind: Literal["number", "side", "location", "category", "change", "feature", "date"]
    section: str = Field(description="Which narrative section held it.")
    reason: Literal[
        "not_in_findings", "negates_a_finding", "ambiguous_negation", "other_sub_region"
    ] = Field(
        description="not_in_findings: an asserted claim the findings do not assert; "
        "negates_a_finding: a negated claim of something the findings assert; "
        "ambiguous_negation: a negation may or may not cover it; other_sub_region: a volume "
        "given for another sub-region than the one named."
    )
    polarity: Literal["asserted", "negated", "ambiguous"] = "asserted"
    start: int | None = Field(default=None, description="Offset of the claim in its section.")
    length: int = Field(default=0, description="Length of the claim in characters.")


FallbackCode = Literal[
    "no_endpoint",
    "busy",
    "timeout",
    "unreachable",
    "http_error",
    "reply_too_large",
    "not_chat_completion",
    "invalid_json",
    "schema_mismatch",
    "grounding",
    "prompt_echo",
    "incomplete",
]
"""Why the template was used although the LLM was requested (``docs/report.md``)."""


class WriterRecord(BaseModel):
    """Which writer produced the narrative and, for the LLM, how it went.

    Nothing here is the endpoint's text: a failure is a code, our own sentence and lengths.
    """

    requested: WriterName
    used: WriterName
    model: str | None = Field(default=None, description="LLM model name, when the LLM was asked.")
    fallback_code: FallbackCode | None = Field(
        default=None, description="Why the template was used although the LLM was requested."
    )
    fallback_reason: str | None = Field(
        default=None,
        description="The fallback code in words, with counts and lengths only (never the "
        "endpoint's text).",
    )
    http_status: int | None = Field(default=None, description="The endpoint's HTTP status.")
    reply_chars: int | None = Field(
        default=None, description="Length of the endpoint's reply body, when one came."
    )
    mismatches: list[GroundingMismatch] = Field(default_factory=list)
    claims_checked: int = Field(default=0, description="Claims the grounding checker compared.")
    duration_ms: float = 0.0


class Narrative(BaseModel):
    """Prose sections written by the writer."""

    findings: str
    impression: str


class StudyReport(BaseModel):
    """A structured, research-only radiology-style report of one study."""

    title: str = "CerebraScan brain tumour MRI report"
    notice: str = Field(description="Research-use notice of the study's findings.")
    generated_at: datetime
    technique: Technique
    findings: TumourFindings
    classification: ModelOpinion
    radiogenomics: ModelOpinion
    biopsy_targets: BiopsyTargets
    structures_at_risk: NoGoStructures
    change: ChangeSincePrior
    quality: QualitySection
    overlay: OverlayImage
    narrative: Narrative
    writer: WriterRecord
