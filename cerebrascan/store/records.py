"""Repository API of the study store: save and find analysed studies and their patients.

The embedded default is a SQLite file under the data folder (WAL mode, ``BEGIN IMMEDIATE``
transactions, a 30 s busy timeout); teams point ``Settings.store_url`` at PostgreSQL
(``postgresql+psycopg://user:password@host/db``). Each study is saved in one transaction; saving a
study id that is already stored changes nothing and is not an error. Patient ids go through
:func:`~cerebrascan.store.patient_ids.normalise_patient_id` and are never logged.

Every study and patient belongs to a tenant (``DEFAULT_TENANT`` unless the caller names one);
a patient id is looked up within its tenant only, so two tenants' ``P1`` are two patients.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    CursorResult,
    Engine,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker

from cerebrascan.store import migrations
from cerebrascan.store.models import DEFAULT_TENANT, Patient, Study
from cerebrascan.store.patient_ids import HASH_PREFIX, normalise_patient_id

if TYPE_CHECKING:
    from cerebrascan.settings import Settings

logger = logging.getLogger(__name__)

STUDY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class StudyRecord:
    """One stored study.

    ``patient_id`` is the stored key (the pseudonymous id, or ``hmac-...`` for a name-like id);
    it is left out of ``repr`` so that a logged record never carries it.
    """

    study_id: str
    patient_id: str | None = field(repr=False)
    study_date: date | None
    created_at: datetime
    model_name: str
    model_version: str
    analyzer_versions: dict[str, str]
    findings: dict[str, Any] = field(repr=False)
    artefacts: dict[str, str]
    tenant: str = DEFAULT_TENANT


def normalise_url(url: str) -> URL:
    """Parse a store URL; a bare ``postgresql://`` (or ``postgres://``) uses psycopg 3.

    Raises:
        ValueError: the URL is neither SQLite nor PostgreSQL (the password is masked).
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        shown = parsed.render_as_string(hide_password=True)
        raise ValueError(f"store URL {shown!r} is not sqlite:/// or postgresql://")
    return parsed


def create_store_engine(url: str) -> Engine:
    """An engine for the store at ``url``; SQLite gets WAL mode and immediate transactions."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy's "begin" event below open transactions (pysqlite's own are deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Any) -> None:
        # Take the write lock up front: two writers queue instead of failing on lock upgrade.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class StudyRepository:
    """Saves and finds studies in the study store.

    Args:
        url: SQLAlchemy URL of the store (``sqlite:///path`` or ``postgresql+psycopg://...``).
        patient_id_key: HMAC key of patient ids (every id is stored as its keyed hash); None
            stores pseudonymous ids as sent and refuses name-like ones.
        migrate: run ``alembic upgrade head`` now (the default; tests of migrations turn it off).
            With a key, ids stored as sent (before a key was set) are then replaced by their
            hash, so their timelines still join.
    """

    def __init__(
        self, url: str, *, patient_id_key: bytes | None = None, migrate: bool = True
    ) -> None:
        self.engine = create_store_engine(url)
        self.dialect = self.engine.dialect.name
        self._patient_id_key = patient_id_key
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            migrations.upgrade(self.engine)
            if patient_id_key is not None:
                self._hash_stored_patient_ids()

    @classmethod
    def from_settings(cls, settings: Settings) -> StudyRepository:
        """The store configured by ``settings`` (``store_url`` or SQLite under ``data_dir``)."""
        key = settings.patient_id_key
        return cls(
            settings.store_database_url,
            patient_id_key=key.get_secret_value().encode("utf-8") if key is not None else None,
        )

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    def patient_key(self, patient_id: str) -> str:
        """The key ``patient_id`` is stored under (see :func:`normalise_patient_id`).

        Raises:
            PatientIdError: the id is refused; the message never repeats it.
        """
        return normalise_patient_id(patient_id, self._patient_id_key)

    def save_study(
        self,
        study_id: str,
        *,
        findings: Mapping[str, Any],
        model_name: str,
        model_version: str,
        patient_id: str | None = None,
        study_date: date | None = None,
        created_at: datetime | None = None,
        analyzer_versions: Mapping[str, str] | None = None,
        artefacts: Mapping[str, str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> StudyRecord:
        """Store a study (and its patient, if new) in one transaction.

        Saving a ``study_id`` that is already stored keeps the first record and returns it.

        Args:
            study_id: 32 lowercase hex characters.
            findings: the ``AnalyzeResponse`` as JSON-compatible data.
            model_name: registry name of the model that segmented the study.
            model_version: its registry version.
            patient_id: pseudonymous patient id (normalised, maybe hashed); None for none.
            study_date: acquisition date of the study.
            created_at: when the study was analysed (aware); default now.
            analyzer_versions: analyzer name -> version.
            artefacts: artefact name -> location (``file://`` URI).
            tenant: the tenant the study and its patient belong to.

        Raises:
            ValueError: a malformed study id or a naive ``created_at``.
            PatientIdError: the patient id is refused.
        """
        _check_study_id(study_id)
        key = self.patient_key(patient_id) if patient_id is not None else None
        now = datetime.now(UTC)
        row = {
            "id": study_id,
            "tenant": tenant,
            "patient_id": key,
            "study_date": study_date,
            "created_at": created_at or now,
            "model_name": model_name,
            "model_version": model_version,
            "analyzer_versions": dict(analyzer_versions or {}),
            "findings": dict(findings),
            "artefacts": dict(artefacts or {}),
        }
        with self._sessions.begin() as session:
            if key is not None:
                session.execute(
                    self._insert(Patient)
                    .values(tenant=tenant, id=key, created_at=now)
                    .on_conflict_do_nothing(index_elements=["tenant", "id"])
                )
            result = session.execute(
                self._insert(Study).values(**row).on_conflict_do_nothing(index_elements=["id"])
            )
            inserted = cast("CursorResult[Any]", result).rowcount
        if not inserted:
            logger.info("study %s is already stored; kept the first record", study_id)
        record = self.get_study(study_id)
        if record is None:  # pragma: no cover - the insert above committed
            raise RuntimeError(f"study {study_id} vanished right after it was saved")
        return record

    def get_study(self, study_id: str, *, tenant: str | None = None) -> StudyRecord | None:
        """The stored study ``study_id``, or None if there is none (or, with ``tenant``, if it
        belongs to another tenant).

        Raises:
            ValueError: the id is not 32 lowercase hex characters.
        """
        _check_study_id(study_id)
        with self._sessions() as session:
            study = session.get(Study, study_id)
            if study is None or (tenant is not None and study.tenant != tenant):
                return None
            return _record(study)

    def study_owner(self, study_id: str) -> tuple[str, str | None] | None:
        """The tenant and stored patient key of ``study_id``, or None if it has no record
        (one indexed read, no findings: the tenant check of every study route).

        Raises:
            ValueError: the id is not 32 lowercase hex characters.
        """
        _check_study_id(study_id)
        query = select(Study.tenant, Study.patient_id).where(Study.id == study_id)
        with self._sessions() as session:
            row = session.execute(query).first()
        return (row[0], row[1]) if row is not None else None

    def studies_for_patient(
        self, patient_id: str, *, tenant: str = DEFAULT_TENANT
    ) -> list[StudyRecord]:
        """A tenant's patient's studies, by study date (undated last), then created time,
        then id.

        Raises:
            PatientIdError: the patient id is refused.
        """
        key = self.patient_key(patient_id)
        query = (
            select(Study)
            .where(Study.tenant == tenant)
            .where(Study.patient_id == key)
            .order_by(Study.study_date.asc().nulls_last(), Study.created_at, Study.id)
        )
        with self._sessions() as session:
            return [_record(study) for study in session.scalars(query)]

    def prior_studies(
        self,
        patient_id: str,
        before: date,
        *,
        limit: int,
        exclude_study_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[StudyRecord]:
        """A tenant's patient's studies dated strictly before ``before``, oldest first.

        Studies without a date, on the same date or later are left out; of the rest, the
        ``limit`` most recent are returned (ties on a date: created time, then id).

        Raises:
            PatientIdError: the patient id is refused.
            ValueError: ``limit`` < 1.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        key = self.patient_key(patient_id)
        query = (
            select(Study)
            .where(Study.tenant == tenant)
            .where(Study.patient_id == key)
            .where(Study.study_date.is_not(None))
            .where(Study.study_date < before)
            .order_by(Study.study_date.desc(), Study.created_at.desc(), Study.id.desc())
            .limit(limit)
        )
        if exclude_study_id is not None:
            query = query.where(Study.id != exclude_study_id)
        with self._sessions() as session:
            found = [_record(study) for study in session.scalars(query)]
        return found[::-1]

    def has_patient(self, patient_id: str, *, tenant: str = DEFAULT_TENANT) -> bool:
        """Whether any study of the tenant's patient is stored.

        Raises:
            PatientIdError: the patient id is refused.
        """
        key = self.patient_key(patient_id)
        with self._sessions() as session:
            return session.get(Patient, (tenant, key)) is not None

    def delete_study(self, study_id: str, *, tenant: str | None = None) -> StudyRecord | None:
        """Delete the study ``study_id`` (and its patient when it was the patient's last).

        Args:
            study_id: the study.
            tenant: delete it only if it belongs to this tenant; None: whoever it belongs to
                (the retention sweep).

        Returns:
            The deleted record, or None if there was none (of ``tenant``).

        Raises:
            ValueError: the id is not 32 lowercase hex characters.
        """
        _check_study_id(study_id)
        with self._sessions.begin() as session:
            study = session.get(Study, study_id)
            if study is None or (tenant is not None and study.tenant != tenant):
                return None
            record = _record(study)
            session.delete(study)
            session.flush()
            if record.patient_id is not None:
                left = session.scalar(
                    select(func.count())
                    .select_from(Study)
                    .where(Study.tenant == record.tenant)
                    .where(Study.patient_id == record.patient_id)
                )
                if not left:
                    session.execute(
                        delete(Patient)
                        .where(Patient.tenant == record.tenant)
                        .where(Patient.id == record.patient_id)
                    )
            return record

    def study_ids_created_before(self, cutoff: datetime) -> list[str]:
        """Ids of the studies analysed before ``cutoff`` (aware), oldest first."""
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        query = select(Study.id).where(Study.created_at < cutoff).order_by(Study.created_at)
        with self._sessions() as session:
            return list(session.scalars(query))

    def delete_patient(self, patient_id: str, *, tenant: str = DEFAULT_TENANT) -> list[str] | None:
        """Delete a tenant's patient and every study of theirs, in one transaction.

        Returns:
            The ids of the deleted studies, or None if the patient is not stored.

        Raises:
            PatientIdError: the patient id is refused.
        """
        key = self.patient_key(patient_id)
        theirs = (Study.tenant == tenant) & (Study.patient_id == key)
        with self._sessions.begin() as session:
            if session.get(Patient, (tenant, key)) is None:
                return None
            study_ids = list(session.scalars(select(Study.id).where(theirs)))
            session.execute(delete(Study).where(theirs))
            session.execute(delete(Patient).where(Patient.tenant == tenant, Patient.id == key))
            return study_ids

    def _hash_stored_patient_ids(self) -> None:
        """Replace patient ids stored as sent (before ``patient_id_key`` was set) by their
        keyed hash, patient and studies in one transaction; a no-op once all are hashed."""
        unhashed = select(Patient).where(Patient.id.not_like(f"{HASH_PREFIX}%"))
        with self._sessions.begin() as session:
            patients = list(session.scalars(unhashed))
            for patient in patients:
                key = self.patient_key(patient.id)
                session.execute(
                    self._insert(Patient)
                    .values(tenant=patient.tenant, id=key, created_at=patient.created_at)
                    .on_conflict_do_nothing(index_elements=["tenant", "id"])
                )
                session.execute(
                    update(Study)
                    .where(Study.tenant == patient.tenant, Study.patient_id == patient.id)
                    .values(patient_id=key)
                )
                session.delete(patient)
        if patients:
            logger.info("%d stored patient ids replaced by their keyed hash", len(patients))

    def _insert(self, model: type[Patient] | type[Study]) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(model)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model)


def _check_study_id(study_id: str) -> None:
    if not isinstance(study_id, str) or not STUDY_ID_PATTERN.match(study_id):
        raise ValueError(f"study id {str(study_id)[:64]!r} is not 32 lowercase hex characters")


def _record(study: Study) -> StudyRecord:
    return StudyRecord(
        study_id=study.id,
        patient_id=study.patient_id,
        study_date=study.study_date,
        created_at=study.created_at,
        model_name=study.model_name,
        model_version=study.model_version,
        analyzer_versions=dict(study.analyzer_versions),
        findings=dict(study.findings),
        artefacts=dict(study.artefacts),
        tenant=study.tenant,
    )
