"""The DICOM input's contracts: the inventory of ``POST /dicom/inspect`` and the ``dicom``
section of an analysis answered by ``POST /analyze/dicom``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SeriesSummary(BaseModel):
    """One series of an upload, from its headers (no pixels read)."""

    series_uid: str = Field(description="SeriesInstanceUID.")
    study_uid: str = Field(description="StudyInstanceUID.")
    number: int | None = Field(default=None, description="SeriesNumber.")
    description: str | None = Field(default=None, description="SeriesDescription.")
    modality: str | None = Field(default=None, description="Modality, e.g. MR.")
    image_type: list[str] = Field(default_factory=list, description="ImageType values.")
    orientation: str | None = Field(
        default=None, description="Main plane of the slices: axial, coronal or sagittal."
    )
    oblique_deg: float | None = Field(
        default=None, description="Angle between the slice normal and the main plane's axis."
    )
    slice_count: int = Field(description="Slices (frames) in the series.")
    instance_count: int = Field(description="Files (instances) in the series.")
    multiframe: bool = Field(description="Whether slices are frames of multiframe instances.")
    voxel_size_mm: tuple[float, float, float] | None = Field(
        default=None, description="(column, row, slice) spacing in mm; None if unreadable."
    )
    acquisition: str | None = Field(default=None, description="MRAcquisitionType (2D or 3D).")
    repetition_time_ms: float | None = Field(default=None, description="RepetitionTime.")
    echo_time_ms: float | None = Field(default=None, description="EchoTime.")
    inversion_time_ms: float | None = Field(default=None, description="InversionTime.")
    contrast_agent: str | None = Field(default=None, description="ContrastBolusAgent.")
    frame_of_reference_uid: str | None = Field(default=None, description="FrameOfReferenceUID.")
    transfer_syntax: str | None = Field(default=None, description="Transfer syntax name.")


class RoleProposal(BaseModel):
    """The series proposed for one contrast and why."""

    series_uid: str | None = Field(description="The chosen series; None when none could be.")
    rule: str | None = Field(
        default=None, description="The selection rule that chose it, or 'series_map'."
    )
    reason: str = Field(description="Why this series (or why none).")
    candidates: list[str] = Field(
        default_factory=list, description="Every series the rules matched for the contrast."
    )


class GeometryCheck(BaseModel):
    """The geometry check of a proposed series (headers only)."""

    series_uid: str
    ok: bool
    slice_step_mm: float | None = None
    problem: str | None = Field(default=None, description="What is wrong, when not ok.")


class DicomInventory(BaseModel):
    """Answer of ``POST /dicom/inspect``: what the upload holds and what would be analysed."""

    studies: list[str] = Field(description="StudyInstanceUIDs in the upload.")
    series: list[SeriesSummary]
    roles: dict[str, RoleProposal] = Field(description="Proposed series per contrast.")
    rejected: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Series matched by no contrast (SeriesInstanceUID -> why, per rule).",
    )
    checks: list[GeometryCheck] = Field(
        default_factory=list, description="Geometry checks of the proposed series."
    )
    problems: list[str] = Field(
        default_factory=list,
        description="What would make POST /analyze/dicom answer 422 (empty: it would run).",
    )
    skipped_files: int = Field(description="Files left out (not DICOM, DICOMDIR, __MACOSX...).")
    skipped_examples: list[str] = Field(
        default_factory=list, description="The first skipped files and why."
    )


class GridSummary(BaseModel):
    """A voxel grid."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str = Field(description="Axis codes, e.g. 'LAS'.")


class RoleOnGrid(BaseModel):
    """How one contrast reached the reference grid."""

    series_uid: str
    series_number: int | None = None
    rule: str = Field(description="The selection rule that chose the series, or 'series_map'.")
    source_grid: GridSummary
    resampling: Literal["none", "geometry", "rigid"] = Field(
        description="none: the reference itself or the same grid; geometry: by DICOM "
        "coordinates (one frame of reference); rigid: registered."
    )
    registration_residual_mm: float | None = Field(
        default=None, description="The rigid registration's residual, when registered."
    )


class BrainMaskSummary(BaseModel):
    """Brain extraction on the reference grid."""

    applied: bool
    volume_ml: float | None = None
    reason: str = Field(description="Why it ran or not (options.skull_stripped, extractor).")


class AtlasNormalisation(BaseModel):
    """Segmentation in the SRI24 atlas space (``dicom.normalise_to_atlas``), as BraTS does."""

    atlas: str = Field(default="SRI24", description="The atlas the study was registered to.")
    grid: GridSummary = Field(description="The atlas grid the network segmented on.")
    source_role: str = Field(description="The contrast registered to the atlas T1.")
    registration_residual_mm: float = Field(
        description="Inverse-consistency residual of the rigid registration (mm)."
    )
    rotation_deg: float
    translation_mm: float


class DicomAnalysis(BaseModel):
    """The ``dicom`` section of an analysis of a DICOM study."""

    study_uid: str
    reference_role: str
    reference_series_uid: str
    grid: GridSummary = Field(
        description="The reference grid: the labels and the stored segmentation lie on it."
    )
    roles: dict[str, RoleOnGrid]
    brain_mask: BrainMaskSummary
    skipped_files: int = 0
    atlas: AtlasNormalisation | None = Field(
        default=None,
        description="Present when the study was segmented in the SRI24 space; the labels are "
        "still returned on the reference grid.",
    )
