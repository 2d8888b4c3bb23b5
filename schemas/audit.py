"""The audit trail as ``GET /audit`` answers it: pseudonyms only, never a patient id."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class AuditRecord(BaseModel):
    """One patient-linked read or write."""

    at: datetime = Field(description="When the request ended (UTC).")
    tenant: str = Field(description="The tenant of the key that sent it.")
    key_name: str | None = Field(description="The key's name (null with auth off).")
    action: str = Field(description="What was done: analyze, study.read, timeline.read, ...")
    route: str = Field(description="The route template (ids are never part of it).")
    study_id: str | None = Field(description="The study, when the request named or made one.")
    patient: str | None = Field(
        description="The patient's pseudonym: the stored keyed hash (hmac-...) with "
        "patient_id_key set, else ref-<16 hex> of a SHA-256; never the id a client sent."
    )
    status: int = Field(description="The answer's HTTP status (gRPC: its code's number).")


class AuditPage(BaseModel):
    """The caller's tenant's audit records since a time, oldest first."""

    events: list[AuditRecord]
    next_since: datetime | None = Field(
        description="Pass as since= to read on (null when this page was not full)."
    )
