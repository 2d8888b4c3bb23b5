"""Plain GET routes for stored studies, mounted into the BentoML service at ``/studies``."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from cerebrascan.errors import InputError
from cerebrascan.study_store import RESULT_FILE, SEGMENTATION_FILE, StudyStore


def studies_app(root: Path) -> Starlette:
    """Routes ``GET /{study_id}`` (result JSON), ``GET /{study_id}/segmentation`` (NIfTI) and
    ``GET /{study_id}/artefacts/{name}`` (an analyzer's NIfTI map; 400 for a malformed name,
    404 if absent)."""
    store = StudyStore(root)

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

    return Starlette(
        routes=[
            Route("/{study_id}", result, methods=["GET"]),
            Route("/{study_id}/segmentation", segmentation, methods=["GET"]),
            Route("/{study_id}/artefacts/{name}", artefact, methods=["GET"]),
        ]
    )
