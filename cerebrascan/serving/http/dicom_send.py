"""``POST /studies/{id}/dicom/send`` (admin): a DICOM-origin study's SEG, SR and PDF to a PACS.

The target is named in the body (``{"target": "<name>"}``) and configured in ``pacs.targets``
(DICOMweb STOW-RS or DIMSE C-STORE). The answer lists each instance sent and the target's status
for it. Unknown target 400, unknown study 404, NIfTI-origin study 409 (as ``GET .../dicom/seg``),
no tumour to encode 422, a target that is unreachable or refuses an instance 502.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cerebrascan.dicom_out.study_outputs import StudyDicomOutputs
from cerebrascan.errors import InputError
from cerebrascan.pacs.sender import OutgoingInstance, SendError, send_instances
from cerebrascan.pacs.settings import PacsSettings
from cerebrascan.report.settings import ReportSettings
from cerebrascan.report.study_reports import StudyReports
from cerebrascan.serving.http.openapi import Operation, describes
from cerebrascan.store.artefacts import StudyArtefacts
from schemas.pacs import DicomSendRequest, DicomSendResponse

logger = logging.getLogger(__name__)


def _error(message: str, status_code: int, **extra: object) -> Response:
    return JSONResponse({"error": message, **extra}, status_code=status_code)


def _target_name(body: bytes, settings: PacsSettings) -> str:
    """The target named by the request body.

    Raises:
        InputError: 400 for a body that is not ``{"target": name}`` or an unknown name.
    """
    try:
        request = DicomSendRequest.model_validate(json.loads(body or b"null"))
    except (ValueError, ValidationError) as exc:
        detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not JSON"
        raise InputError(
            f'the body must be JSON {{"target": "<name>"}} ({detail})', status_code=400
        ) from None
    if request.target not in settings.targets:
        configured = ", ".join(sorted(settings.targets)) or "none"
        raise InputError(
            f"unknown target {request.target[:64]!r}; pacs.targets configures: {configured}",
            status_code=400,
            field="target",
        )
    return request.target


def dicom_send_app(
    settings: PacsSettings, store: StudyArtefacts, report_settings: ReportSettings
) -> Starlette:
    """The send route, to be mounted at ``/studies`` beside :func:`.studies.studies_app`."""
    outputs = StudyDicomOutputs(store)
    reports = StudyReports(store, report_settings)

    def instances(study_id: str) -> list[OutgoingInstance]:
        seg = outputs.segmentation(study_id)  # 404 unknown, 409 NIfTI origin, 422 no tumour
        sr = outputs.measurement_report(study_id)
        pdf = outputs.report_pdf(study_id, lambda: reports.rendered(study_id, "pdf").body)
        return [
            OutgoingInstance.of("seg", seg),
            OutgoingInstance.of("sr", sr),
            OutgoingInstance.of("pdf", pdf),
        ]

    @describes(
        Operation(
            "Send the study's DICOM SEG, SR and PDF to a configured PACS target (admin)",
            response=DicomSendResponse,
            request=DicomSendRequest,
            errors=(400, 404, 409, 422, 502),
        )
    )
    async def send(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            name = _target_name(await request.body(), settings)
            outgoing = await run_in_threadpool(instances, study_id)
        except InputError as exc:
            return _error(str(exc), exc.status_code)
        target = settings.targets[name]
        try:
            sent = await run_in_threadpool(
                send_instances, target, outgoing, calling_ae=settings.ae_title
            )
        except SendError as exc:
            logger.warning("sending study %s to target %s failed: %s", study_id, name, exc)
            return _error(f"target {name!r}: {exc}", 502)
        answer = DicomSendResponse(study_id=study_id, target=name, kind=target.kind, objects=sent)
        refused = [f"{o.kind} ({o.status})" for o in sent if not o.stored]
        logger.info(
            "sent study %s to target %s: %d of %d stored",
            study_id,
            name,
            len(sent) - len(refused),
            len(sent),
        )
        if refused:
            return _error(
                f"target {name!r} did not store: {', '.join(refused)}",
                502,
                **answer.model_dump(mode="json"),
            )
        return JSONResponse(answer.model_dump(mode="json"))

    return Starlette(routes=[Route("/{study_id}/dicom/send", send, methods=["POST"])])
