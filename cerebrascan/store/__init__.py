"""The study store: patients (pseudonymous ids) and analysed studies in SQLite or PostgreSQL.

Use :meth:`StudyRepository.from_settings`; the schema is migrated to the newest alembic revision
when the repository opens.
"""

from cerebrascan.store.patient_ids import PatientIdError, normalise_patient_id
from cerebrascan.store.records import StudyRecord, StudyRepository, create_store_engine

__all__ = [
    "PatientIdError",
    "StudyRecord",
    "StudyRepository",
    "create_store_engine",
    "normalise_patient_id",
]
