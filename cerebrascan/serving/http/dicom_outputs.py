"""``GET /studies/{id}/dicom/seg|sr|pdf``: a DICOM-origin study's results for the PACS."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cerebrascan.dicom_out.seg import SEG_TYPES, SegType
from cerebrascan.dicom_out.study_outputs import StudyDicomOutputs
from cerebrascan.errors import InputError
from cerebrascan.report.study_reports import StudyReports
from cerebrascan.serving.http.openapi import Operation, QueryParameter, describes
from cerebrascan.store.artefacts import StudyArtefacts

DICOM_MEDIA_TYPE = "application/dicom"


def _seg_type(value: str) -> SegType:
    for choice in SEG_TYPES:
        if value == choice:
            return choice
    raise InputError(f"type {value[:20]!r} is not one of {', '.join(SEG_TYPES)}", status_code=400)


def _dicom(body: bytes, study_id: str, name: str) -> Response:
    return Response(
        body,
        media_type=DICOM_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{study_id}-{name}.dcm"'},
    )


def _error(exc: InputError) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=exc.status_code)


def dicom_output_routes(store: StudyArtefacts, reports: StudyReports) -> list[Route]:
    """Routes under ``/studies``: ``/{id}/dicom/seg?type=binary|labelmap``, ``/{id}/dicom/sr``
    and ``/{id}/dicom/pdf``. A study analysed from NIfTI answers 409 "no DICOM source"."""
    outputs = StudyDicomOutputs(store)

    @describes(
        Operation(
            "The study's DICOM SEG on its reference series (BINARY, or LABELMAP on request)",
            media_types=(DICOM_MEDIA_TYPE,),
            query=(
                QueryParameter(
                    "type", "the SEG's segmentation type", choices=SEG_TYPES, default="binary"
                ),
            ),
            errors=(400, 404, 409, 422),
        )
    )
    async def segmentation(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            seg_type = _seg_type(request.query_params.get("type", "binary"))
            body = await run_in_threadpool(outputs.segmentation, study_id, seg_type)
        except InputError as exc:
            return _error(exc)
        return _dicom(body, study_id, f"seg-{seg_type}")

    @describes(
        Operation(
            "The study's volumes as a TID 1500 Comprehensive 3D SR referencing its SEG",
            media_types=(DICOM_MEDIA_TYPE,),
            errors=(400, 404, 409, 422),
        )
    )
    async def measurement_report(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            body = await run_in_threadpool(outputs.measurement_report, study_id)
        except InputError as exc:
            return _error(exc)
        return _dicom(body, study_id, "sr")

    @describes(
        Operation(
            "The study's report as a DICOM Encapsulated PDF in the source study",
            media_types=(DICOM_MEDIA_TYPE,),
            errors=(400, 404, 409),
        )
    )
    async def report_pdf(request: Request) -> Response:
        study_id = request.path_params["study_id"]

        def render() -> bytes:
            return reports.rendered(study_id, "pdf").body

        try:
            body = await run_in_threadpool(outputs.report_pdf, study_id, render)
        except InputError as exc:
            return _error(exc)
        return _dicom(body, study_id, "report")

    return [
        Route("/{study_id}/dicom/seg", segmentation, methods=["GET"]),
        Route("/{study_id}/dicom/sr", measurement_report, methods=["GET"]),
        Route("/{study_id}/dicom/pdf", report_pdf, methods=["GET"]),
    ]
