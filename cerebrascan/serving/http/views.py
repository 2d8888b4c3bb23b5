"""Routes of the study views (``docs/views.md``), included in the ``/studies`` app, and
``GET /palette``.

Image, mesh, video and volume answers carry ``Cache-Control: no-store, private``: they show a
patient's study, and NiiVue fetches some files with ``cache: "force-cache"``. Every refusal is
JSON ``{"error": ...}`` with a 4xx status naming the bad parameter.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from cerebrascan.errors import InputError
from cerebrascan.serving.http.openapi import Operation, QueryParameter, describes
from cerebrascan.serving.http.render_jobs import RenderJobs
from cerebrascan.store.artefacts import SEGMENTATION_FILE, StudyArtefacts
from cerebrascan.views import palette
from cerebrascan.views.mesh import MEDIA_TYPES, MESH_FORMATS, MESH_REGIONS
from cerebrascan.views.orientation import PLANES
from cerebrascan.views.palette import FILL_ALPHA
from cerebrascan.views.settings import ViewSettings
from cerebrascan.views.slices import STYLES
from cerebrascan.views.study_views import StudyViews
from cerebrascan.views.video import VIDEO_FORMATS, VIDEO_MODES
from cerebrascan.views.viewer_page import NIIVUE_VERSION, niivue_script, viewer_html
from schemas.http import RenderJobRequest, RenderJobStatus

NO_STORE = {"Cache-Control": "no-store, private"}
VIDEO_MEDIA_TYPES = {"mp4": "video/mp4", "gif": "image/gif"}
Choice = TypeVar("Choice", bound=str)
Handler = Callable[[Request], Awaitable[Response]]


def _choice(request: Request, name: str, choices: tuple[Choice, ...], default: Choice) -> Choice:
    """Query parameter ``name``, one of ``choices`` (``default`` when absent).

    Raises:
        InputError: 400 naming the parameter and the choices.
    """
    return _query_choice(request.query_params, name, choices, default)


def _query_choice(
    query: Mapping[str, str], name: str, choices: tuple[Choice, ...], default: Choice
) -> Choice:
    value = query.get(name, default)
    for choice in choices:
        if value == choice:
            return choice
    raise InputError(f"{name} {value[:20]!r} is not one of {', '.join(choices)}", status_code=400)


def _path_choice(value: str, name: str, choices: tuple[Choice, ...]) -> Choice:
    for choice in choices:
        if value == choice:
            return choice
    raise InputError(f"{name} {value[:20]!r} is not one of {', '.join(choices)}", status_code=404)


def _integer(request: Request, name: str, default: int | None) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name} {value[:20]!r} is not an integer", status_code=400) from None


def _alpha(request: Request) -> float:
    value = request.query_params.get("alpha")
    if value is None or value == "":
        return FILL_ALPHA
    try:
        alpha = float(value)
    except ValueError:
        raise InputError(f"alpha {value[:20]!r} is not a number", status_code=400) from None
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha {alpha} is outside 0..1", status_code=400)
    return alpha


def _refusing(handler: Handler) -> Handler:
    """``handler`` with :class:`InputError` answered as JSON with its status."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except InputError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status_code)

    return wrapped


def view_routes(store: StudyArtefacts, settings: ViewSettings | None = None) -> list[Route]:
    """Routes under ``/studies``: ``/viewer/niivue-<version>.umd.js``, ``/{id}/viewer``,
    ``/{id}/views/index.json``, ``slice.png``, ``montage.png``, ``mesh.{glb,stl,obj}``,
    ``flythrough.{mp4,gif}``, ``orbit.{mp4,gif}`` and ``volume/{labels|contrast}.nii.gz``."""
    views = StudyViews(store, settings)
    jobs = RenderJobs()

    # The long views as zero-argument renders: the GET routes run them at once, a render job
    # later; their parameters are checked here either way (4xx before any work).
    def mesh_render(study_id: str, fmt: str, query: Mapping[str, str]) -> Callable[[], Path]:
        mesh_format = _path_choice(fmt, "mesh format", MESH_FORMATS)
        region = _query_choice(query, "region", MESH_REGIONS, "all")
        return functools.partial(views.mesh, study_id, region, mesh_format)

    def flythrough_render(study_id: str, fmt: str, query: Mapping[str, str]) -> Callable[[], Path]:
        video_format = _path_choice(fmt, "video format", VIDEO_FORMATS)
        plane = _query_choice(query, "plane", PLANES, "axial")
        mode = _query_choice(query, "mode", VIDEO_MODES, "rgb")
        return functools.partial(
            views.flythrough,
            study_id,
            plane,
            mode,
            video_format,
            background=query.get("background"),
        )

    def orbit_render(study_id: str, fmt: str, query: Mapping[str, str]) -> Callable[[], Path]:
        video_format = _path_choice(fmt, "video format", VIDEO_FORMATS)
        return functools.partial(views.orbit, study_id, video_format)

    renderers: dict[str, Callable[[str, str, Mapping[str, str]], Callable[[], Path]]] = {
        "mesh": mesh_render,
        "flythrough": flythrough_render,
        "orbit": orbit_render,
    }

    @describes(
        Operation(
            "Render a long view (mesh, flythrough, orbit) in the background; poll its job",
            response=RenderJobStatus,
            request=RenderJobRequest,
            errors=(400, 404, 422, 429),
        )
    )
    async def submit_job(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            body = RenderJobRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise InputError(f"render job: {problems}", status_code=422) from None
        render = renderers[body.view](study_id, body.format, body.query)
        store.artefact(study_id, SEGMENTATION_FILE)  # 400 malformed id, 404 unknown study
        result_url = f"/studies/{study_id}/views/{body.view}.{body.format}"
        if body.query:
            result_url += "?" + urlencode(sorted(body.query.items()))
        job = jobs.submit(study_id, result_url, render)
        return JSONResponse(job.as_json(), status_code=202, headers=NO_STORE)

    @describes(
        Operation(
            "A render job's status and, once done, the URL that serves its file",
            response=RenderJobStatus,
            errors=(400, 404),
        )
    )
    async def job_status(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        store.folder(study_id)  # 400 for a malformed id
        job = jobs.get(study_id, request.path_params["job_id"])
        return JSONResponse(job.as_json(), headers=NO_STORE)

    @describes(
        Operation(
            "The vendored NiiVue build the viewer page loads (BSD-2-Clause)",
            media_types=("text/javascript",),
            errors=(404,),
        )
    )
    async def niivue(request: Request) -> Response:
        """The vendored NiiVue 0.69.0 build (BSD-2-Clause) the viewer page loads."""
        return Response(
            niivue_script(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @describes(
        Operation(
            "The study's NiiVue viewer page (no study data inside; its fetches send the key)",
            media_types=("text/html",),
            errors=(400,),
        )
    )
    async def viewer(request: Request) -> Response:
        """The study viewer page (NiiVue): labels, surfaces, markers, volumes; no data inside."""
        study_id = request.path_params["study_id"]
        store.folder(study_id)  # 400 for a malformed id; existence is checked by the page's fetches
        return HTMLResponse(
            viewer_html(study_id),
            headers={**NO_STORE, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"},
        )

    @describes(
        Operation(
            "What the views can show: kept display contrasts, labels present, slice counts",
            errors=(400, 404),
        )
    )
    async def index(request: Request) -> Response:
        """What the views can show: kept display contrasts, labels present, slice counts."""
        study_id = request.path_params["study_id"]
        return JSONResponse(await run_in_threadpool(views.index, study_id), headers=NO_STORE)

    @describes(
        Operation(
            "One slice in radiological display with the labels in the palette colours",
            media_types=("image/png",),
            query=(
                QueryParameter("plane", "Plane", choices=PLANES, default="axial"),
                QueryParameter("index", "Slice index (default: the largest tumour area)"),
                QueryParameter("background", "t1n, t1c, t2w, t2f (a kept display copy) or none"),
                QueryParameter("style", "Label style", choices=STYLES, default="fill"),
                QueryParameter("alpha", "Label opacity, 0..1"),
            ),
            errors=(400, 404),
        )
    )
    async def slice_png(request: Request) -> Response:
        """One radiological slice with labels (plane, index, background, style, alpha)."""
        study_id = request.path_params["study_id"]
        plane = _choice(request, "plane", PLANES, "axial")
        png = await run_in_threadpool(
            views.slice_png,
            study_id,
            plane,
            _integer(request, "index", None),
            background=request.query_params.get("background"),
            style=_choice(request, "style", STYLES, "fill"),
            alpha=_alpha(request),
        )
        return Response(png, media_type="image/png", headers=NO_STORE)

    @describes(
        Operation(
            "Slices evenly spaced through the tumour, numbered, with a scale bar",
            media_types=("image/png",),
            query=(
                QueryParameter("plane", "Plane", choices=PLANES, default="axial"),
                QueryParameter("count", "Number of slices, 1..36", default="9"),
                QueryParameter("background", "t1n, t1c, t2w, t2f (a kept display copy) or none"),
                QueryParameter("style", "Label style", choices=STYLES, default="fill"),
            ),
            errors=(400, 404),
        )
    )
    async def montage_png(request: Request) -> Response:
        """Slices evenly spaced through the tumour, numbered, with a scale bar (plane, count)."""
        study_id = request.path_params["study_id"]
        plane = _choice(request, "plane", PLANES, "axial")
        count = _integer(request, "count", 9)
        png = await run_in_threadpool(
            views.montage_png,
            study_id,
            plane,
            9 if count is None else count,
            background=request.query_params.get("background"),
            style=_choice(request, "style", STYLES, "fill"),
        )
        return Response(png, media_type="image/png", headers=NO_STORE)

    @describes(
        Operation(
            "Tumour surfaces in scanner RAS millimetres (format glb, stl or obj)",
            media_types=tuple(MEDIA_TYPES[name] for name in MESH_FORMATS),
            query=(QueryParameter("region", "Region", choices=MESH_REGIONS, default="all"),),
            errors=(400, 404, 409),
        )
    )
    async def mesh(request: Request) -> Response:
        """Tumour surfaces in RAS mm as glb, stl or obj (region NETC|SNFH|ET|TC|WT|all)."""
        study_id = request.path_params["study_id"]
        mesh_format = _path_choice(request.path_params["format"], "mesh format", MESH_FORMATS)
        region = _choice(request, "region", MESH_REGIONS, "all")
        render = renderers["mesh"](study_id, mesh_format, request.query_params)
        path = await run_in_threadpool(render)
        return _file(path, MEDIA_TYPES[mesh_format], f"{study_id}-{region}.{mesh_format}")

    @describes(
        Operation(
            "A sweep through a plane's slices (format mp4, H.264, or gif)",
            media_types=tuple(VIDEO_MEDIA_TYPES[name] for name in VIDEO_FORMATS),
            query=(
                QueryParameter("plane", "Plane", choices=PLANES, default="axial"),
                QueryParameter("mode", "Grey or labels blended in RGB", choices=VIDEO_MODES),
                QueryParameter("background", "t1n, t1c, t2w, t2f (a kept display copy) or none"),
            ),
            errors=(400, 404),
        )
    )
    async def flythrough(request: Request) -> Response:
        """A sweep through a plane's slices as H.264 mp4 or gif (plane, mode grey|rgb)."""
        study_id = request.path_params["study_id"]
        video_format = _path_choice(request.path_params["format"], "video format", VIDEO_FORMATS)
        render = renderers["flythrough"](study_id, video_format, request.query_params)
        path = await run_in_threadpool(render)
        return _file(path, VIDEO_MEDIA_TYPES[video_format], None)

    @describes(
        Operation(
            "The tumour surfaces turning about the head (format mp4, H.264, or gif)",
            media_types=tuple(VIDEO_MEDIA_TYPES[name] for name in VIDEO_FORMATS),
            errors=(400, 404, 409),
        )
    )
    async def orbit(request: Request) -> Response:
        """The tumour surfaces turning about the head as H.264 mp4 or gif."""
        study_id = request.path_params["study_id"]
        video_format = _path_choice(request.path_params["format"], "video format", VIDEO_FORMATS)
        path = await run_in_threadpool(renderers["orbit"](study_id, video_format, {}))
        return _file(path, VIDEO_MEDIA_TYPES[video_format], None)

    @describes(
        Operation(
            "The label map (name labels) or a kept display copy (t1c...) as NIfTI",
            media_types=("application/gzip",),
            errors=(400, 404),
        )
    )
    async def volume(request: Request) -> Response:
        """The label map (``labels``) or a kept display copy (``t1c``...) as NIfTI."""
        study_id = request.path_params["study_id"]
        name = request.path_params["name"]
        if name == "labels":
            path = store.artefact(study_id, SEGMENTATION_FILE)
        else:
            path = await run_in_threadpool(views.display_volume, study_id, name)
        return _file(path, "application/gzip", None)

    routes: list[tuple[str, Handler]] = [
        (f"/viewer/niivue-{NIIVUE_VERSION}.umd.js", niivue),
        ("/{study_id}/viewer", viewer),
        ("/{study_id}/views/index.json", index),
        ("/{study_id}/views/slice.png", slice_png),
        ("/{study_id}/views/montage.png", montage_png),
        ("/{study_id}/views/mesh.{format}", mesh),
        ("/{study_id}/views/flythrough.{format}", flythrough),
        ("/{study_id}/views/orbit.{format}", orbit),
        ("/{study_id}/views/volume/{name}.nii.gz", volume),
    ]
    return [Route(path, _refusing(handler), methods=["GET"]) for path, handler in routes] + [
        Route("/{study_id}/views/jobs", _refusing(submit_job), methods=["POST"]),
        Route("/{study_id}/views/jobs/{job_id}", _refusing(job_status), methods=["GET"]),
    ]


def _file(path: Path, media_type: str, filename: str | None) -> Response:
    return FileResponse(path, media_type=media_type, filename=filename, headers=NO_STORE)


def palette_app() -> Starlette:
    """Route ``GET /palette?format=json|itksnap|slicer|niivue``: the label colour table.

    Mount it at ``/`` (like the plugins app): it serves exactly ``/palette``.
    """

    @describes(
        Operation(
            "The label colour table as JSON, ITK-SNAP labels, a Slicer table or NiiVue JSON",
            media_types=("application/json", "text/plain"),
            query=(
                QueryParameter(
                    "format", "Export format", choices=palette.PALETTE_FORMATS, default="json"
                ),
            ),
            errors=(400,),
        )
    )
    async def exported(request: Request) -> Response:
        """The label colour table as json, ITK-SNAP labels, Slicer .ctbl or NiiVue JSON."""
        palette_format = _choice(request, "format", palette.PALETTE_FORMATS, "json")
        body, media_type, filename = palette.exported(palette_format)
        return Response(
            body,
            media_type=media_type,
            headers={"Content-Disposition": f'inline; filename="{filename}"'},
        )

    return Starlette(routes=[Route("/palette", _refusing(exported), methods=["GET"])])
