"""The audit trail in the study store: one row per patient-linked read or write.

Rows are only added (:meth:`AuditTrail.append`) and read (:meth:`AuditTrail.since`); nothing in
the code updates or deletes them. They hold a patient *pseudonym* (:func:`patient_pseudonym`),
never the id a client sent.

Why a table and not a JSON-lines file: the store is already the one place a deployment backs up,
it is shared by every replica of the front service (PostgreSQL), and ``since`` is an indexed
query instead of a scan of a growing file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import sessionmaker

from cerebrascan.store.models import AuditEvent
from cerebrascan.store.patient_ids import HASH_PREFIX

MAX_AUDIT_PAGE = 1000
"""Most events one read returns."""


def patient_pseudonym(stored_key: str | None) -> str | None:
    """What the audit trail records of a patient: the stored keyed hash (``hmac-...``) when
    ``patient_id_key`` is set; without a key, ``ref-`` and 16 hex characters of the SHA-256 of
    the stored id (the store itself holds that id as sent then; set the key for a keyed
    pseudonym)."""
    if stored_key is None:
        return None
    if stored_key.startswith(HASH_PREFIX):
        return stored_key
    return "ref-" + hashlib.sha256(stored_key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class AuditEntry:
    """One audit record (see :class:`~cerebrascan.store.models.AuditEvent`)."""

    at: datetime
    tenant: str
    key_name: str | None
    action: str
    route: str
    study_id: str | None
    patient: str | None
    status: int
    id: int | None = None


class AuditTrail:
    """Appends and reads audit events in the study store.

    Args:
        engine: the study store's engine (its schema migrated, :class:`StudyRepository`).
    """

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine)

    def append(self, entry: AuditEntry) -> None:
        """Add one event (its own transaction).

        Raises:
            ValueError: ``entry.at`` has no time zone.
        """
        if entry.at.tzinfo is None:
            raise ValueError("an audit event's time must be timezone-aware")
        values = {
            "at": entry.at,
            "tenant": entry.tenant,
            "key_name": entry.key_name,
            "action": entry.action,
            "route": entry.route[:200],
            "study_id": entry.study_id,
            "patient": entry.patient,
            "status": entry.status,
        }
        with self._sessions.begin() as session:
            session.execute(insert(AuditEvent).values(**values))

    def since(
        self, tenant: str, since: datetime, *, limit: int = MAX_AUDIT_PAGE
    ) -> list[AuditEntry]:
        """A tenant's events at or after ``since`` (aware), oldest first, at most ``limit``.

        Raises:
            ValueError: a naive ``since`` or ``limit`` outside 1..:data:`MAX_AUDIT_PAGE`.
        """
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise ValueError(f"limit {limit} is outside 1..{MAX_AUDIT_PAGE}")
        query = (
            select(AuditEvent)
            .where(AuditEvent.tenant == tenant, AuditEvent.at >= since)
            .order_by(AuditEvent.at, AuditEvent.id)
            .limit(limit)
        )
        with self._sessions() as session:
            return [
                AuditEntry(
                    at=row.at,
                    tenant=row.tenant,
                    key_name=row.key_name,
                    action=row.action,
                    route=row.route,
                    study_id=row.study_id,
                    patient=row.patient,
                    status=row.status,
                    id=row.id,
                )
                for row in session.scalars(query)
            ]
