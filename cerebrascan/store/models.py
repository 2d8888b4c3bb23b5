"""SQLAlchemy 2 models of the study store: patients (pseudonymous ids) and analysed studies.

The schema is owned by the alembic revisions in ``cerebrascan/store/alembic/versions``; a change
here needs a new revision (``alembic -c cerebrascan/store/alembic.ini revision --autogenerate``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, Date, DateTime, Dialect, ForeignKey, Index, MetaData, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
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
    """A patient, known only by a pseudonymous id (or a keyed hash of a name-like one)."""

    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Study(Base):
    """One analysed study: its findings (the ``AnalyzeResponse`` JSON) and artefact locations."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), nullable=True)
    study_date: Mapped[date | None] = mapped_column(Date(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(64))
    analyzer_versions: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    findings: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    artefacts: Mapped[dict[str, str]] = mapped_column(JSONDocument)

    __table_args__ = (
        Index("ix_studies_patient_timeline", "patient_id", "study_date", "created_at"),
    )
