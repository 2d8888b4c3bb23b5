"""``GET /patients/{patient_id}/timeline``: a patient's volumes and responses over time.

Mounted into the BentoML service at ``/patients``. The patient id goes through the study
store's normalisation (a name-like id is hashed with the configured key, or refused): a
refused id is a 422 whose message never repeats it, an id with no stored study a 404.
``?format=png`` returns a plot instead of JSON. ``DELETE /patients/{patient_id}`` (admin)
removes the patient and all their studies (:mod:`cerebrascan.store.deletion`). The id is part
of the URL, so the access log's copy of such paths is masked (``/patients/***/timeline``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cerebrascan.longitudinal.plot import timeline_png
from cerebrascan.longitudinal.timeline import build_timeline
from cerebrascan.serving.http.auth import caller_of
from cerebrascan.serving.http.openapi import Operation, describes
from cerebrascan.settings import Settings
from cerebrascan.store import PatientIdError, StudyRepository
from cerebrascan.store.artefacts import StudyArtefacts
from cerebrascan.store.deletion import StudyDeletion
from schemas.http import DeletionResponse

logger = logging.getLogger(__name__)
FORMATS = ("json", "png")
ACCESS_LOGGERS = ("bentoml.access",)
"""Loggers that print request paths; patient ids in them are masked."""
_PATIENT_PATH = re.compile(r"(/patients/)[^/\s,)?]+")
AUDIT_PATIENT_KEY = "audit_patient_key"
"""``scope["state"]`` key: the stored key of the request's patient, for the audit trail."""


class PatientIdRedactor(logging.Filter):
    """Masks the patient id of ``/patients/<id>/...`` paths in log records (access logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with ``/patients/***``; never drops a record."""
        message = record.getMessage()
        if "/patients/" in message:
            record.msg = _PATIENT_PATH.sub(r"\1***", message)
            record.args = ()
        return True


def install_access_log_redaction() -> None:
    """Add :class:`PatientIdRedactor` to the access loggers (once)."""
    for name in ACCESS_LOGGERS:
        access = logging.getLogger(name)
        if not any(isinstance(f, PatientIdRedactor) for f in access.filters):
            access.addFilter(PatientIdRedactor())


def patients_app(settings: Settings, repository: StudyRepository | None = None) -> Starlette:
    """Route ``GET /{patient_id}/timeline`` (``?format=json`` default, or ``png``).

    Args:
        settings: the store to read (opened on the first request) and the response criteria.
        repository: an open study store to use instead (tests).
    """
    install_access_log_redaction()
    lock = threading.Lock()
    opened: list[StudyRepository] = [repository] if repository is not None else []

    def store() -> StudyRepository:
        with lock:
            if not opened:
                opened.append(StudyRepository.from_settings(settings))
            return opened[0]

    def answer(raw_id: str, output: str, tenant: str, state: dict[str, object]) -> Response:
        repo = store()
        try:
            key = repo.patient_key(raw_id)
        except PatientIdError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        state[AUDIT_PATIENT_KEY] = key
        # a patient id names a patient of the caller's tenant only: another's is unknown here
        records = repo.studies_for_patient(key, tenant=tenant)
        if not records:
            return JSONResponse({"error": "no stored study for this patient id"}, status_code=404)
        timeline = build_timeline(key, records, settings.longitudinal)
        logger.info("timeline of %d visits served", len(timeline.visits))
        if output == "png":
            return Response(timeline_png(timeline), media_type="image/png")
        return JSONResponse(timeline.model_dump(mode="json"))

    async def timeline(request: Request) -> Response:
        output = request.query_params.get("format", "json")
        if output not in FORMATS:
            return JSONResponse(
                {"error": f"format {output[:20]!r} is not one of {list(FORMATS)}"},
                status_code=400,
            )
        # database reads and plotting block: keep them off the event loop
        return await asyncio.to_thread(
            answer,
            request.path_params["patient_id"],
            output,
            caller_of(request.scope).tenant,
            request.scope.setdefault("state", {}),
        )

    deletion = StudyDeletion(store, StudyArtefacts(settings.studies_dir))

    @describes(
        Operation(
            "Delete a patient and all their studies (records, label maps, artefacts, views)",
            response=DeletionResponse,
            errors=(404, 422),
        )
    )
    async def remove(request: Request) -> Response:
        """Delete a patient and every study of theirs (admin)."""
        state = request.scope.setdefault("state", {})
        tenant = caller_of(request.scope).tenant

        def delete(patient_id: str) -> int | None:
            state[AUDIT_PATIENT_KEY] = store().patient_key(patient_id)
            return deletion.delete_patient(patient_id, tenant=tenant)

        try:
            deleted = await asyncio.to_thread(delete, request.path_params["patient_id"])
        except PatientIdError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        if deleted is None:
            return JSONResponse({"error": "no stored patient with this id"}, status_code=404)
        return JSONResponse(DeletionResponse(deleted_studies=deleted).model_dump())

    return Starlette(
        routes=[
            Route("/{patient_id}/timeline", timeline, methods=["GET"]),
            Route("/{patient_id}", remove, methods=["DELETE"]),
        ]
    )
