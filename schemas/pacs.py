"""The PACS contracts: ``POST /studies/{id}/dicom/send``'s request and answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

OutputKind = Literal["seg", "sr", "pdf"]


class DicomSendRequest(BaseModel):
    """Where to send a DICOM-origin study's SEG, SR and PDF."""

    model_config = {"extra": "forbid"}

    target: str = Field(
        min_length=1, max_length=64, description="A target name from the pacs.targets setting."
    )


class SentObject(BaseModel):
    """One DICOM instance sent, and what the target answered for it."""

    kind: OutputKind = Field(description="seg, sr or pdf.")
    sop_class_uid: str = Field(description="SOPClassUID of the instance.")
    sop_instance_uid: str = Field(description="SOPInstanceUID of the instance.")
    stored: bool = Field(description="Whether the target reported it stored.")
    status: str = Field(
        description="The target's status: a DIMSE status (0x0000 success) or, for STOW-RS, "
        "'stored' or the failure reason."
    )


class DicomSendResponse(BaseModel):
    """What ``POST /studies/{id}/dicom/send`` sent and how the target answered."""

    study_id: str = Field(description="The study sent.")
    target: str = Field(description="The target's name.")
    kind: Literal["dicomweb", "dimse"] = Field(description="How it was sent: STOW-RS or C-STORE.")
    objects: list[SentObject] = Field(description="SEG, SR and PDF, in the order sent.")
