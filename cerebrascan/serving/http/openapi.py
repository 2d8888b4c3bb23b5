"""The served OpenAPI spec (``GET /docs.json``): BentoML's spec plus the mounted apps' routes.

BentoML describes its own routes (health checks, ``/metrics``, ``POST /analyze`` and the task
routes) but only merges mounted *FastAPI* apps into ``/docs.json``; our mounted routes
(``/studies``, ``/patients``, ``/admin``, ``/plugins``, ...) are Starlette apps, so BentoML
leaves them out. :func:`openapi_app` serves the whole spec instead: mounted at ``/``, its
``/docs.json`` route matches before BentoML's own (BentoML adds the mounts before its
``docs.json`` route, and a passive mount answers only the paths its routes match).

A mounted route is described by an :class:`Operation`: from :data:`OPERATIONS` (keyed by method
and full path), or from an ``__openapi__`` attribute on its endpoint function
(:func:`describes`), which is how a new route describes itself. A route with neither still
appears, with its docstring's first line, its path parameters and the error responses, but no
response model: ``tests/test_openapi.py`` fails for it, so it gets one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from cerebrascan.serving.http.auth import route_need
from schemas.analysis import AnalyzeResponse
from schemas.analyzers import PluginListing
from schemas.http import ErrorResponse, PromoteRequest, PromoteResponse
from schemas.report import StudyReport
from schemas.timeline import Timeline

REF_TEMPLATE = "#/components/schemas/{model}"
SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS"})
"""Methods Starlette adds by itself (HEAD for every GET): not separate operations."""

ERROR_DESCRIPTIONS = {
    400: "Bad request: a malformed parameter (the message names it)",
    401: "No API key, or an unknown one (with auth.enabled)",
    403: "The key's role is too low for this route",
    404: "No such study, artefact, patient or version",
    409: "The version could not be loaded; the old one still serves",
    413: "Upload over the size limit",
    415: "The body is not Content-Type: application/json",
    422: "The input is well-formed but cannot be used (the message names why)",
    429: "Too many jobs waiting or running (jobs.max_queued); retry later",
    501: "Not available in this deployment",
    503: "The model is not loaded yet",
}

T = TypeVar("T", bound=Callable[..., Any])


@dataclass(frozen=True)
class QueryParameter:
    """One query parameter of an operation."""

    name: str
    description: str
    choices: tuple[str, ...] = ()
    default: str | None = None


@dataclass(frozen=True)
class Operation:
    """How one mounted route is described in the spec.

    Args:
        summary: one line: what the route answers (also the README route table's text).
        response: the JSON body's model, or None when the body is not JSON.
        media_types: the body's media types (``application/json`` when ``response`` is set).
        request: the JSON request body's model, if the route takes one.
        query: its query parameters.
        errors: the 4xx/5xx statuses it answers with an :class:`ErrorResponse` (401/403 are
            added for routes that need a key).
    """

    summary: str
    response: type[BaseModel] | None = None
    media_types: tuple[str, ...] = ("application/json",)
    request: type[BaseModel] | None = None
    query: tuple[QueryParameter, ...] = ()
    errors: tuple[int, ...] = (404,)
    extra_responses: dict[int, str] = field(default_factory=dict)


def describes(operation: Operation) -> Callable[[T], T]:
    """Attach ``operation`` to a route's endpoint function (for routes added after this module).

    Example::

        @describes(Operation("the cohort's studies", response=CohortListing, errors=(404,)))
        async def cohort(request: Request) -> Response: ...
    """

    def attach(endpoint: T) -> T:
        endpoint.__openapi__ = operation  # type: ignore[attr-defined]
        return endpoint

    return attach


_REPORT_FORMAT = QueryParameter(
    "format", "Report format", choices=("json", "md", "html", "pdf"), default="json"
)
_REPORT_WRITER = QueryParameter(
    "writer", "Narrative writer (default: report.writer)", choices=("template", "llm")
)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/studies/{study_id}"): Operation(
        "The stored JSON answer of a study", response=AnalyzeResponse, errors=(400, 404)
    ),
    ("GET", "/studies/{study_id}/segmentation"): Operation(
        "The label map (NIfTI, uint8, the input's grid)",
        media_types=("application/gzip",),
        errors=(400, 404),
    ),
    ("GET", "/studies/{study_id}/artefacts/{name}"): Operation(
        "An analyzer's NIfTI map (name `^[a-z0-9_-]{1,64}$`)",
        media_types=("application/gzip",),
        errors=(400, 404),
    ),
    ("GET", "/studies/{study_id}/report"): Operation(
        "The study's report, built from its stored findings (json, md, html or pdf)",
        response=StudyReport,
        media_types=("application/json", "text/markdown", "text/html", "application/pdf"),
        query=(_REPORT_FORMAT, _REPORT_WRITER),
        errors=(400, 404),
    ),
    ("GET", "/studies/{study_id}/report/overlay.png"): Operation(
        "The report's key image (PNG)", media_types=("image/png",), errors=(400, 404)
    ),
    ("GET", "/patients/{patient_id}/timeline"): Operation(
        "A patient's dated studies, volumes and response categories (json or png)",
        response=Timeline,
        media_types=("application/json", "image/png"),
        query=(QueryParameter("format", "Answer format", ("json", "png"), "json"),),
        errors=(400, 404, 422),
    ),
    ("POST", "/admin/models/promote"): Operation(
        "Point the alias at a registry version and serve it without a restart",
        response=PromoteResponse,
        request=PromoteRequest,
        errors=(400, 404, 409, 415, 503),
    ),
    ("POST", "/admin/plugins/reload"): Operation(
        "Reload the analyzer plugins; answers the new listing",
        response=PluginListing,
        errors=(415,),
    ),
    ("GET", "/plugins"): Operation(
        "Installed plugins, versions, analyzers with their result/option JSON schemas, "
        "plugins that failed to load",
        response=PluginListing,
        errors=(),
    ),
}
"""The mounted routes of ``service.py`` that do not describe themselves (:func:`describes`)."""

SERVED_BY_BENTOML: dict[tuple[str, str], str] = {
    ("GET", "/"): "The OpenAPI UI (BentoML's)",
    ("GET", "/docs.json"): "This OpenAPI spec",
    ("GET", "/schema.json"): "BentoML's service schema (APIs and their JSON schemas)",
}
"""Routes BentoML serves but leaves out of its spec; described here so the spec is whole."""

BENTOML_SUMMARIES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "200 while the process lives (BentoML's older name of /livez)",
    ("GET", "/livez"): "200 while the process lives",
    ("GET", "/readyz"): "200 while the runner answers (cached probe), else 503 with the reason",
    ("GET", "/metrics"): "Prometheus metrics",
    ("POST", "/analyze"): "Segmentation, volumes and analyzer outcomes of a 4-modality study "
    "(multipart NIfTI fields t1n, t1c, t2w, t2f and optional JSON options)",
    ("POST", "/analyze/submit"): "The same analysis as a job: answers a task_id at once",
    ("GET", "/analyze/status"): "A job's status (in_progress, success, failure, cancelled)",
    ("GET", "/analyze/get"): "A finished job's answer (that of POST /analyze) or its error",
    ("POST", "/analyze/retry"): "Run a failed or cancelled job again",
    ("PUT", "/analyze/cancel"): "Cancel a job in progress",
    ("POST", "/analyze/dicom"): "Segmentation of a DICOM study (multipart zip 'archive' or "
    "repeated 'files', optional series_map and options): series chosen per contrast, put on "
    "the reference series' grid; the answer's dicom section says how",
    ("POST", "/analyze/dicom/submit"): "The DICOM analysis as a job: answers a task_id at once",
    ("GET", "/analyze/dicom/status"): "A DICOM job's status",
    ("GET", "/analyze/dicom/get"): "A finished DICOM job's answer or its error",
    ("POST", "/analyze/dicom/retry"): "Run a failed or cancelled DICOM job again",
    ("PUT", "/analyze/dicom/cancel"): "Cancel a DICOM job in progress",
    ("POST", "/dicom/inspect"): "Inventory of a DICOM upload (studies, series, proposed series "
    "per contrast and why, geometry checks) without analysing it",
}
"""One-line summaries of the operations BentoML describes (its own are long HTML sentences)."""

UPLOAD_ERRORS = {
    "/analyze": (400, 413, 422),
    "/analyze/dicom": (400, 413, 422),
    "/analyze/dicom/submit": (400, 413, 422),
    "/dicom/inspect": (400, 413, 422),
    "/analyze/submit": (400, 413, 422, 429),
}
"""Statuses of the upload routes beyond BentoML's generic 400/404/500 (docs: README)."""


def iter_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(method, path, endpoint) of every route, mounts followed; HEAD/OPTIONS and static files
    (mounts without routes) left out. Path converters (``{name:path}``) become ``{name}``."""
    for route in routes:
        if isinstance(route, Route):
            path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", prefix + route.path)
            for method in sorted((route.methods or set()) - SKIPPED_METHODS):
                yield method, path or "/", route.endpoint
        elif isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            if inner is not None:
                yield from iter_routes(inner, prefix + route.path)


def served_routes(app: Any) -> list[tuple[str, str]]:
    """Sorted, unique (method, path) of everything ``app`` (the service's ASGI app) serves."""
    while not hasattr(app, "routes"):  # middleware wrappers keep the app as ``.app``
        app = app.app
    return sorted({(method, path) for method, path, _ in iter_routes(app.routes)})


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    """Add ``model`` (and the models it uses) to ``components``; its ``$ref``."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault(model.__name__, schema)
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _docstring_summary(endpoint: Any) -> str:
    doc = (getattr(endpoint, "__doc__", None) or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


def operation_for(method: str, path: str, endpoint: Any) -> Operation | None:
    """The :class:`Operation` that describes a mounted route, or None if nothing does."""
    described = getattr(endpoint, "__openapi__", None)
    if isinstance(described, Operation):
        return described
    return OPERATIONS.get((method, path))


def render_operation(
    method: str, path: str, operation: Operation | None, endpoint: Any, components: dict[str, Any]
) -> dict[str, Any]:
    """One OpenAPI operation object (``components`` receives the models it refers to)."""
    responses: dict[str, Any] = {}
    if operation is None:
        responses["200"] = {"description": "Successful Response (no model declared)"}
        summary = _docstring_summary(endpoint) or f"{method} {path}"
        errors: tuple[int, ...] = (400, 404)
    else:
        content: dict[str, Any] = {}
        for media_type in operation.media_types:
            if media_type == "application/json" and operation.response is not None:
                content[media_type] = {"schema": _schema_ref(operation.response, components)}
            elif media_type == "application/json":
                content[media_type] = {"schema": {"type": "object"}}
            else:
                content[media_type] = {"schema": {"type": "string", "format": "binary"}}
        responses["200"] = {"description": "Successful Response", "content": content}
        summary = operation.summary
        errors = operation.errors
    need = route_need(path.replace("{", "x").replace("}", "x"), method)
    statuses = set(errors) | ({401, 403} if need not in ("public", "metrics") else set())
    error_ref = _schema_ref(ErrorResponse, components)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": error_ref}},
        }
    rendered: dict[str, Any] = {
        "summary": summary,
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()}{path}").strip("_"),
        "tags": [path.strip("/").split("/")[0] or "ui"],
        "responses": responses,
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
    ]
    for query in operation.query if operation else ():
        schema: dict[str, Any] = {"type": "string"}
        if query.choices:
            schema["enum"] = list(query.choices)
        if query.default is not None:
            schema["default"] = query.default
        parameters.append(
            {"name": query.name, "in": "query", "required": False, "schema": schema}
            | {"description": query.description}
        )
    if parameters:
        rendered["parameters"] = parameters
    if operation is not None and operation.request is not None:
        rendered["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(operation.request, components)}},
        }
    return rendered


def merged_spec(service: Any) -> dict[str, Any]:
    """BentoML's spec of ``service`` with every mounted route and BentoML's UI routes added.

    Args:
        service: the ``bentoml.Service`` (``service.CerebraScan``).

    Returns:
        The OpenAPI 3 document as a dict.
    """
    spec: dict[str, Any] = copy.deepcopy(service.openapi_spec.asdict())
    paths: dict[str, dict[str, Any]] = spec.setdefault("paths", {})
    components: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    spec["info"]["description"] = (service.doc or "").strip()
    spec["info"]["title"] = "CerebraScan"
    for (method, path), summary in SERVED_BY_BENTOML.items():
        paths.setdefault(path, {})[method.lower()] = {
            "summary": summary,
            "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()}{path}").strip("_")
            or "index",
            "tags": ["Infrastructure"],
            "responses": {"200": {"description": "Successful Response"}},
        }
    for app, prefix, _ in service.mount_apps:
        for method, path, endpoint in iter_routes(getattr(app, "routes", []), prefix.rstrip("/")):
            if (method, path) in SERVED_BY_BENTOML:
                continue
            operation = operation_for(method, path, endpoint)
            paths.setdefault(path, {})[method.lower()] = render_operation(
                method, path, operation, endpoint, components
            )
    error_ref = _schema_ref(ErrorResponse, components)
    for path, item in paths.items():  # BentoML's own operations
        for method, operation_object in item.items():
            if "summary" not in operation_object:
                description = re.sub(r"<[^>]+>", "", operation_object.get("description", ""))
                operation_object["summary"] = BENTOML_SUMMARIES.get(
                    (method.upper(), path), description.strip().split("\n")[0].rstrip(".")
                )
            # BentoML keys its statuses by int; JSON has string keys only (no duplicates)
            responses = {str(k): v for k, v in operation_object.get("responses", {}).items()}
            operation_object["responses"] = responses
            need = route_need(path, method)
            extra = set(UPLOAD_ERRORS.get(path, ()) if method == "post" else ())
            extra |= {401, 403} if need not in ("public", "metrics", None) else set()
            for status in sorted(extra):
                responses.setdefault(
                    str(status),
                    {
                        "description": ERROR_DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )
    return spec


def spec_operations(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Sorted (method, path, summary) of every operation in ``spec``."""
    return sorted(
        (method.upper(), path, operation.get("summary", ""))
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    )


def openapi_app(service: Callable[[], Any]) -> Starlette:
    """Route ``GET /docs.json``: the merged spec (mount at ``/``, before BentoML's own).

    Args:
        service: returns the ``bentoml.Service`` (a callable: the service class is made after
            the apps it mounts).
    """
    cached: list[dict[str, Any]] = []

    async def docs_json(request: Request) -> Response:
        if not cached:
            cached.append(merged_spec(service()))
        return JSONResponse(cached[0])

    return Starlette(routes=[Route("/docs.json", docs_json, methods=["GET"])])
