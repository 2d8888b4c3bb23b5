"""Delete a study or a patient: records, label maps, artefacts, display copies, cached views.

Files go first, then the records, so an interrupted deletion leaves a record whose retry
finishes the job (never files that no record points to). Log lines name a pseudonym
(:func:`pseudonym`), never the study or patient id.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from cerebrascan.store.artefacts import StudyArtefacts
from cerebrascan.store.models import DEFAULT_TENANT
from cerebrascan.store.records import StudyRepository

if TYPE_CHECKING:
    from cerebrascan.settings import Settings

logger = logging.getLogger(__name__)


def pseudonym(value: str) -> str:
    """A short, stable stand-in for an id in log lines (``ref-`` and 12 hex characters of its
    SHA-256): an operator holding the id can match it; the log alone does not reveal it."""
    return "ref-" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def lazy_repository(settings: Settings) -> Callable[[], StudyRepository]:
    """A function returning the study store of ``settings``, opened on its first call."""
    lock = threading.Lock()
    opened: list[StudyRepository] = []

    def repository() -> StudyRepository:
        with lock:
            if not opened:
                opened.append(StudyRepository.from_settings(settings))
            return opened[0]

    return repository


class StudyDeletion:
    """Deletes stored studies and patients.

    Args:
        repository: returns the open study store (opened on first use).
        artefacts: the studies' artefact folders.
    """

    def __init__(
        self, repository: Callable[[], StudyRepository], artefacts: StudyArtefacts
    ) -> None:
        self.repository = repository
        self.artefacts = artefacts

    def delete_study(self, study_id: str, *, tenant: str | None = None) -> bool:
        """Delete one study; whether there was anything to delete.

        Args:
            study_id: the study.
            tenant: delete it only if it is this tenant's (a study without a record only for
                the default tenant); None: whoever's (the retention sweep).

        Raises:
            InputError: 400 for a malformed study id.
        """
        self.artefacts.folder(study_id)  # 400 for a malformed id, before the store is asked
        if tenant is not None:
            owner = self.repository().study_owner(study_id)
            owned = owner[0] == tenant if owner is not None else tenant == DEFAULT_TENANT
            if not owned:
                return False
        removed_files = self.artefacts.delete(study_id)
        record = self.repository().delete_study(study_id, tenant=tenant)
        found = removed_files or record is not None
        if found:
            logger.info(
                "study %s deleted (record: %s, files: %s)",
                pseudonym(study_id),
                record is not None,
                removed_files,
            )
        return found

    def delete_expired(self, cutoff: datetime) -> int:
        """Delete every study analysed before ``cutoff`` (aware); how many were deleted."""
        expired = self.repository().study_ids_created_before(cutoff)
        deleted = sum(1 for study_id in expired if self.delete_study(study_id))
        if deleted:
            logger.info("retention: %d studies analysed before %s deleted", deleted, cutoff)
        return deleted

    def delete_patient(self, patient_id: str, *, tenant: str = DEFAULT_TENANT) -> int | None:
        """Delete a tenant's patient and all their studies; how many studies, or None if
        unknown (to that tenant).

        Raises:
            PatientIdError: the patient id is refused (the message never repeats it).
        """
        repository = self.repository()
        key = repository.patient_key(patient_id)
        study_ids = [
            record.study_id for record in repository.studies_for_patient(key, tenant=tenant)
        ]
        for study_id in study_ids:
            self.artefacts.delete(study_id)
        deleted = repository.delete_patient(key, tenant=tenant)
        if deleted is None:
            return None
        for study_id in set(deleted) - set(study_ids):  # saved while this ran
            self.artefacts.delete(study_id)
        logger.info("patient %s deleted with %d studies", pseudonym(key), len(deleted))
        return len(deleted)
