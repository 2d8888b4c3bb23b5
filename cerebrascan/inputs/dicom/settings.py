"""Settings of the DICOM input (``dicom``): archive caps, series rules, reference grid."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

DicomRole = Literal["t1n", "t1c", "t2w", "t2f"]


class DicomSettings(BaseModel):
    """How a DICOM study is unpacked, which series are used and onto which grid they go."""

    model_config = {"extra": "forbid"}

    max_members: int = Field(
        default=5000, gt=0, description="Most files an archive or upload may hold."
    )
    max_total_mb: float = Field(
        default=2048.0, gt=0, description="Most uncompressed bytes of all files together, in MB."
    )
    max_member_mb: float = Field(
        default=256.0, gt=0, description="Most uncompressed bytes of one archive member, in MB."
    )
    max_compression_ratio: float = Field(
        default=200.0,
        gt=1,
        description="Largest uncompressed/compressed ratio of the archive, and of each member "
        "over 1 MiB (a zip bomb's is ~1000).",
    )
    rules_file: Path | None = Field(
        default=None,
        description="Series selection rules (MONAI Deploy DICOMSeriesSelectorOperator JSON "
        "format); None: the bundled rules/default_rules.json.",
    )
    min_slices: int = Field(
        default=20, ge=1, description="Series with fewer slices (frames) are never selected."
    )
    reference_role: DicomRole = Field(
        default="t1c", description="The series whose grid the others are resampled onto."
    )
    axis_codes: str = Field(
        default="LAS",
        pattern=r"^[LR][AP][SI]$|^[LR][SI][AP]$|^[AP][LR][SI]$|^[AP][SI][LR]$|^[SI][LR][AP]$"
        r"|^[SI][AP][LR]$",
        description="Array axis order the reference grid is permuted/flipped to (no "
        "interpolation) before segmentation: the orientation the model was trained in.",
    )
    registration: Literal["never", "when_needed", "always"] = Field(
        default="when_needed",
        description="Rigid registration onto the reference: when_needed (only across frames "
        "of reference; otherwise by DICOM geometry), always, or never (different frames of "
        "reference are refused).",
    )
    max_slice_gap_ratio: float = Field(
        default=1.5,
        gt=1,
        description="A step between slice positions over this multiple of the median step is "
        "reported as a missing slice.",
    )
    normalise_to_atlas: bool = Field(
        default=False,
        description="Register the study rigidly to the SRI24 T1 and segment it there, as "
        "BraTS does; labels are still returned on the reference series' grid and the answer "
        "reports the registration residual.",
    )
    deidentify: bool = Field(
        default=False,
        description="De-identify every DICOM study (PS3.15 basic profile, keyed UIDs; needs "
        "patient_id_key): the kept headers, the SEG / SR / PDF and the answer's UIDs. Off: "
        "results are filed back under the patient's own study in the hospital's PACS; a "
        "request may still ask for it (options.deidentify), and may not turn it off when on.",
    )
    deidentify_uid_root: str = Field(
        default="2.25",
        pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$",
        max_length=44,
        description="UID root of de-identified UIDs: 2.25 (UUID-derived) or the organisation's "
        "registered root.",
    )
    spacing_tolerance_mm: float = Field(
        default=0.01,
        gt=0,
        description="Largest deviation of a slice step (and of an in-plane offset) from a "
        "regular, unsheared stack, in mm (or 1 % of the step when larger).",
    )
