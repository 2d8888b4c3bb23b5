"""SQLAlchemy 2 models of the study store: patients (pseudonymous ids), analysed studies and the
audit trail. Every patient and study belongs to a tenant (the API key's site or project).

The schema is owned by the alembic revisions in ``cerebrascan/store/alembic/versions``; a change
here needs a new revision (``alembic -c cerebrascan/store/alembic.ini revision --autogenerate``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Date,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
DEFAULT_TENANT = "default"
"""The tenant of an API key that names none, of every request when auth is off, and of every row
stored before tenants existed."""
TENANT_CHARS = 64

JSONDocument = JSON().with_variant(JSONB(), "postgresql")
"""JSON column type: JSONB on PostgreSQL (indexable by later queries), JSON text on SQLite."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} has no time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Patient(Base):
    """A patient of a tenant, known only by a pseudonymous id (or its keyed hash): tenant A's
    ``P1`` and tenant B's ``P1`` are two patients."""

    __tablename__ = "patients"

    tenant: Mapped[str] = mapped_column(
        String(TENANT_CHARS), primary_key=True, server_default=DEFAULT_TENANT
    )
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Study(Base):
    """One analysed study: its findings (the ``AnalyzeResponse`` JSON) and artefact locations."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_CHARS), server_default=DEFAULT_TENANT)
    patient_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    study_date: Mapped[date | None] = mapped_column(Date(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(64))
    analyzer_versions: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    findings: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    artefacts: Mapped[dict[str, str]] = mapped_column(JSONDocument)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant", "patient_id"],
            ["patients.tenant", "patients.id"],
            name="fk_studies_tenant_patients",
        ),
        Index("ix_studies_patient_timeline", "tenant", "patient_id", "study_date", "created_at"),
    )


class AuditEvent(Base):
    """One patient-linked read or write: who (key name, tenant), what (action, route template,
    study id, patient pseudonym), when and how it ended (HTTP status or gRPC code). Never a raw
    patient id; rows are only ever added."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    tenant: Mapped[str] = mapped_column(String(TENANT_CHARS))
    key_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(200))
    study_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    patient: Mapped[str | None] = mapped_column(String(80), nullable=True)
    status: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_audit_events_tenant_at", "tenant", "at"),)
