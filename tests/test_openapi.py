"""The served OpenAPI spec (``GET /docs.json``) is the whole API: every route the app serves,
with its models and error responses, and nothing it does not serve."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from cerebrascan.serving.http.openapi import (
    SERVED_BY_BENTOML,
    Operation,
    describes,
    iter_routes,
    render_operation,
    served_routes,
)

WITHOUT_BODY_MODEL = {path for _, path in SERVED_BY_BENTOML} | {
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
}
"""BentoML's plain-text routes: health checks, Prometheus, the UI."""


@pytest.fixture(scope="module")
def app() -> Any:
    from service import CerebraScan

    return CerebraScan.to_asgi()


@pytest.fixture(scope="module")
def spec(asgi_client: TestClient) -> Iterator[dict[str, Any]]:
    # the session's served app: a second app's first request would register BentoML's
    # request metrics again in the one Prometheus registry of this process
    response = asgi_client.get("/docs.json")
    assert response.status_code == 200
    yield response.json()


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_the_spec_lists_exactly_the_served_routes(spec: dict[str, Any], app: Any) -> None:
    in_spec = sorted((method, path) for method, path, _ in _operations(spec))
    assert in_spec == served_routes(app)
    # the mounted apps BentoML leaves out are in
    for method, path in [
        ("GET", "/studies/{study_id}"),
        ("GET", "/patients/{patient_id}/timeline"),
        ("POST", "/admin/models/promote"),
        ("GET", "/plugins"),
    ]:
        assert (method, path) in in_spec


def test_every_operation_has_a_summary_models_and_error_responses(spec: dict[str, Any]) -> None:
    undescribed = []
    for method, path, operation in _operations(spec):
        assert operation.get("summary"), (method, path)
        if path in WITHOUT_BODY_MODEL:
            continue
        if "content" not in operation["responses"]["200"]:
            undescribed.append(f"{method} {path}")
            continue
        errors = [status for status in operation["responses"] if status.startswith(("4", "5"))]
        assert errors, (method, path)
        for parameter in re.findall(r"\{(\w+)\}", path):
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            if operation.get("x-bentoml-name") is None:
                assert parameter in names, (method, path, parameter)
    assert undescribed == [], (
        "routes without a response model in /docs.json: describe them in "
        "cerebrascan/serving/http/openapi.py (OPERATIONS or @describes)"
    )


def test_models_and_errors_of_the_mounted_routes(spec: dict[str, Any]) -> None:
    stored = spec["paths"]["/studies/{study_id}"]["get"]
    assert stored["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnalyzeResponse"
    }
    assert stored["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert {"401", "403"} <= set(stored["responses"])  # reader routes need a key with auth on
    promote = spec["paths"]["/admin/models/promote"]["post"]
    assert promote["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PromoteRequest"
    }
    assert {"400", "404", "409", "503"} <= set(promote["responses"])
    report = spec["paths"]["/studies/{study_id}/report"]["get"]
    assert set(report["responses"]["200"]["content"]) == {
        "application/json",
        "text/markdown",
        "text/html",
        "application/pdf",
    }
    formats = next(p for p in report["parameters"] if p["name"] == "format")
    assert formats["schema"]["enum"] == ["json", "md", "html", "pdf"]
    analyze = spec["paths"]["/analyze"]["post"]
    assert {"400", "413", "422"} <= set(analyze["responses"])
    assert "401" not in spec["paths"]["/livez"]["get"]["responses"]


def test_the_served_json_has_no_duplicate_keys(asgi_client: TestClient) -> None:
    duplicates: list[list[str]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(keys) != len(set(keys)):
            duplicates.append(keys)
        return dict(items)

    json.loads(asgi_client.get("/docs.json").text, object_pairs_hook=pairs)
    assert duplicates == []


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    missing = {
        ref
        for ref in refs(spec)
        if ref.startswith("#/components/schemas/")
        and ref.removeprefix("#/components/schemas/") not in schemas
    }
    assert missing == set()


def test_a_route_without_a_description_is_listed_without_a_model() -> None:
    class Thing(BaseModel):
        name: str

    async def plain(request: Request) -> Response:
        """The things of a cohort."""
        return JSONResponse([])

    @describes(Operation("one thing", response=Thing, errors=(404, 422)))
    async def described(request: Request) -> Response:
        return JSONResponse({})

    inner = Starlette(
        routes=[
            Route("/{cohort_id}/things", plain, methods=["GET"]),
            Route("/{cohort_id}/thing", described, methods=["GET", "POST"]),
        ]
    )
    routes = list(iter_routes([Mount("/cohorts", inner)]))
    assert [(m, p) for m, p, _ in routes] == [
        ("GET", "/cohorts/{cohort_id}/things"),
        ("GET", "/cohorts/{cohort_id}/thing"),
        ("POST", "/cohorts/{cohort_id}/thing"),
    ]
    components: dict[str, Any] = {}
    method, path, endpoint = routes[0]
    fallback = render_operation(method, path, None, endpoint, components)
    assert fallback["summary"] == "The things of a cohort"
    assert "content" not in fallback["responses"]["200"]
    method, path, endpoint = routes[1]
    rendered = render_operation(method, path, endpoint.__openapi__, endpoint, components)
    assert rendered["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Thing"
    }
    assert {"401", "403", "404", "422"} <= set(rendered["responses"])
    assert rendered["parameters"][0]["name"] == "cohort_id"
    assert "Thing" in components and "ErrorResponse" in components
