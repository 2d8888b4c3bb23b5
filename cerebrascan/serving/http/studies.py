"""Plain GET routes for stored studies, mounted into the BentoML service at ``/studies``."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar, get_args

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from cerebrascan.errors import InputError
from cerebrascan.report.settings import ReportSettings
from cerebrascan.report.study_reports import StudyReports
from cerebrascan.serving.http.auth import ROLE_STATE_KEY, caller_of
from cerebrascan.serving.http.dicom_outputs import dicom_output_routes
from cerebrascan.serving.http.openapi import Operation, describes
from cerebrascan.serving.http.views import view_routes
from cerebrascan.store.artefacts import RESULT_FILE, SEGMENTATION_FILE, StudyArtefacts
from cerebrascan.store.deletion import StudyDeletion
from cerebrascan.views.settings import ViewSettings
from schemas.http import DeletionResponse
from schemas.report import ReportFormat, WriterName

REPORT_FORMATS: tuple[ReportFormat, ...] = get_args(ReportFormat)
REPORT_WRITERS: tuple[WriterName, ...] = get_args(WriterName)
Choice = TypeVar("Choice", bound=str)


def _query_choice(name: str, value: str, choices: tuple[Choice, ...]) -> Choice:
    """The one of ``choices`` that ``value`` (query parameter ``name``) names.

    Raises:
        InputError: 400 if ``value`` is none of them.
    """
    for choice in choices:
        if value == choice:
            return choice
    raise InputError(f"{name} {value[:20]!r} is not one of {', '.join(choices)}", status_code=400)


def studies_app(
    root: Path,
    report_settings: ReportSettings | None = None,
    view_settings: ViewSettings | None = None,
    deletion: StudyDeletion | None = None,
) -> Starlette:
    """Routes ``GET /{study_id}`` (result JSON), ``GET /{study_id}/segmentation`` (NIfTI),
    ``GET /{study_id}/artefacts/{name}`` (an analyzer's NIfTI map; 400 for a malformed name,
    404 if absent), ``GET /{study_id}/report?format=json|md|html|pdf[&writer=template|llm]``
    (the report, built from the stored findings at request time) and
    ``GET /{study_id}/report/overlay.png`` (its key image); ``DELETE /{study_id}`` (admin,
    with ``deletion``) removes the study's record and files.

    ``writer=llm`` when ``report.writer`` is ``template`` is answered 403 unless the API key's
    role (set by :class:`~cerebrascan.serving.http.auth.ApiKeyMiddleware`) is in
    ``report.llm_override_roles``."""
    store = StudyArtefacts(root)
    reports = StudyReports(store, report_settings or ReportSettings())

    def _error(exc: InputError) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code)

    async def result(request: Request) -> Response:
        try:
            path = store.artefact(request.path_params["study_id"], RESULT_FILE)
        except InputError as exc:
            return _error(exc)
        return FileResponse(path, media_type="application/json")

    async def segmentation(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            path = store.artefact(study_id, SEGMENTATION_FILE)
        except InputError as exc:
            return _error(exc)
        return FileResponse(path, media_type="application/gzip", filename=f"{study_id}-seg.nii.gz")

    async def artefact(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        name = request.path_params["name"]
        try:
            path = store.named_artefact(study_id, name)
        except InputError as exc:
            return _error(exc)
        return FileResponse(
            path, media_type="application/gzip", filename=f"{study_id}-{name}.nii.gz"
        )

    async def report(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        writer_param = request.query_params.get("writer")
        try:
            report_format = _query_choice(
                "format", request.query_params.get("format", "json"), REPORT_FORMATS
            )
            writer = (
                None
                if writer_param is None
                else _query_choice("writer", writer_param, REPORT_WRITERS)
            )
            role = request.scope.get("state", {}).get(ROLE_STATE_KEY)
            if not reports.settings.may_override(writer, role):
                raise InputError(
                    f"writer {writer!r} overrides report.writer {reports.settings.writer!r}, "
                    f"which needs a role in report.llm_override_roles "
                    f"{reports.settings.llm_override_roles}; this API key's role is "
                    f"{role or 'unknown'!r}",
                    status_code=403,
                )
            # PDF rendering, NIfTI reading and an LLM call block: keep them off the event loop.
            rendered = await run_in_threadpool(
                reports.rendered, study_id, report_format, writer=writer
            )
        except InputError as exc:
            return _error(exc)
        headers: dict[str, str] = {"X-Report-Writer": rendered.report.writer.used}
        if report_format == "pdf":
            headers["Content-Disposition"] = f'inline; filename="{study_id}-report.pdf"'
        return Response(rendered.body, media_type=rendered.media_type, headers=headers)

    async def report_overlay(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            store.artefact(study_id, RESULT_FILE)
            overlay, png = await run_in_threadpool(reports.overlay, study_id)
        except InputError as exc:
            return _error(exc)
        if png is None:
            return JSONResponse({"error": f"no key image: {overlay.reason}"}, status_code=404)
        return Response(png, media_type="image/png")

    @describes(
        Operation(
            "Delete a study: its record, label map, artefacts, display copies and views",
            response=DeletionResponse,
            errors=(400, 404, 501),
        )
    )
    async def remove(request: Request) -> Response:
        """Delete a stored study (admin)."""
        if deletion is None:
            return JSONResponse({"error": "deletion is not configured here"}, status_code=501)
        try:
            found = await run_in_threadpool(
                deletion.delete_study,
                request.path_params["study_id"],
                tenant=caller_of(request.scope).tenant,
            )
        except InputError as exc:
            return _error(exc)
        if not found:
            return JSONResponse({"error": "no stored study with this id"}, status_code=404)
        return JSONResponse(DeletionResponse(deleted_studies=1).model_dump())

    return Starlette(
        routes=[
            Route("/{study_id}", result, methods=["GET"]),
            Route("/{study_id}", remove, methods=["DELETE"]),
            Route("/{study_id}/segmentation", segmentation, methods=["GET"]),
            Route("/{study_id}/artefacts/{name}", artefact, methods=["GET"]),
            Route("/{study_id}/report", report, methods=["GET"]),
            Route("/{study_id}/report/overlay.png", report_overlay, methods=["GET"]),
            *view_routes(store, view_settings),
            *dicom_output_routes(store, reports),
        ]
    )
