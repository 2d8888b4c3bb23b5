"""Access control: every route needs a role, 401 without or with a bad key, 403 with too low a
role; health checks stay open; promoting a model hot-swaps it without failing a running study.

The route tests wrap the real service app (lifespan and model included) in an enabled
:class:`ApiKeyMiddleware`, in process; the promotion and the over-HTTP checks use the real
``bentoml serve`` of ``tests/secured_server.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from cerebrascan.serving.apikeys import KeyRing, hash_key, new_key, role_allows
from cerebrascan.serving.http.auth import ApiKeyMiddleware, presented_key, route_need
from cerebrascan.serving.settings import ApiKeyEntry, AuthSettings
from tests.secured_server import case_files, wait_for_result, wait_until_in_flight

READER_KEY, READER_ENTRY = new_key("reader-1", "reader")
ADMIN_KEY, ADMIN_ENTRY = new_key("admin-1", "admin")
OPEN_PATHS = {
    "/livez",
    "/readyz",
    "/healthz",
    # the viewer page and its script hold no study data; the page's fetches send the key
    f"/studies/{'0' * 32}/viewer",
    "/studies/viewer/niivue-0.69.0.umd.js",
}
EXAMPLE_PARAMS = {"study_id": "0" * 32, "name": "hotspot", "patient_id": "PAT-0001"}


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, Route):
            path = prefix + route.path
            for param, value in EXAMPLE_PARAMS.items():
                path = path.replace("{" + param + "}", value)
            methods = sorted((route.methods or {"GET"}) - {"HEAD"})
            yield methods[0], path
        elif isinstance(route, Mount):
            inner = getattr(route.app, "routes", None) if route.app is not None else None
            if inner:
                yield from _walk(inner, prefix + route.path)
            else:  # a static-files mount: any file below it
                yield "GET", prefix + route.path + "/swagger-ui.css"


def _service_routes() -> list[tuple[str, str]]:
    from service import CerebraScan

    return sorted(set(_walk(CerebraScan.to_asgi().routes)))


ROUTES = _service_routes()
GUARDED = [(m, p) for m, p in ROUTES if p not in OPEN_PATHS and p != "/metrics"]
ADMIN_ROUTES = [(m, p) for m, p in GUARDED if route_need(p, m) == "admin"]
READER_ROUTES = [(m, p) for m, p in GUARDED if route_need(p, m) == "reader"]


@pytest.fixture(scope="module")
def secured_client(asgi_client: TestClient) -> Iterator[TestClient]:
    """The session's started ASGI app behind an enabled key check (reader and admin keys).

    It wraps the app the session already started rather than starting a second one: two
    started BentoML apps in one process register the same Prometheus series twice."""
    settings = AuthSettings(enabled=True, api_keys=[READER_ENTRY, ADMIN_ENTRY])
    yield TestClient(ApiKeyMiddleware(asgi_client.app, settings))


def test_the_route_list_covers_the_service() -> None:
    paths = {p for _, p in ROUTES}
    for expected in ("/analyze", "/analyze/submit", "/plugins", "/admin/models/promote"):
        assert expected in paths
    assert ADMIN_ROUTES and READER_ROUTES


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_is_mapped_to_a_role(method: str, path: str) -> None:
    assert route_need(path, method) is not None, f"{method} {path} has no role in ROUTE_ROLES"


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_no_key_is_401(secured_client: TestClient, method: str, path: str) -> None:
    response = secured_client.request(method, path)
    assert response.status_code == 401, response.text
    assert "missing API key" in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_unknown_key_is_401(secured_client: TestClient, method: str, path: str) -> None:
    response = secured_client.request(method, path, headers={"X-API-Key": READER_KEY + "x"})
    assert response.status_code == 401, response.text
    assert response.json() == {"error": "invalid API key"}


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_reader_key_on_admin_route_is_403(
    secured_client: TestClient, method: str, path: str
) -> None:
    response = secured_client.request(
        method, path, headers={"Authorization": f"Bearer {READER_KEY}"}
    )
    assert response.status_code == 403, response.text
    message = response.json()["error"]
    assert "'reader-1'" in message and "'admin'" in message
    assert READER_KEY not in message


# submit and retry start a job, which needs the task store `bentoml serve` makes; they are
# checked with a reader key over HTTP in tests/test_async_jobs.py.
@pytest.mark.parametrize(
    ("method", "path"),
    [r for r in READER_ROUTES if r[1] not in ("/analyze/submit", "/analyze/retry")],
)
@pytest.mark.parametrize("role_key", [READER_KEY, ADMIN_KEY], ids=["reader", "admin"])
def test_reader_routes_let_reader_and_admin_through(
    secured_client: TestClient, method: str, path: str, role_key: str
) -> None:
    response = secured_client.request(method, path, headers={"Authorization": f"Bearer {role_key}"})
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_let_admin_through(secured_client: TestClient, method: str, path: str) -> None:
    response = secured_client.request(method, path, headers={"X-API-Key": ADMIN_KEY}, json={})
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize("path", sorted(OPEN_PATHS))
def test_health_checks_need_no_key(secured_client: TestClient, path: str) -> None:
    assert secured_client.get(path).status_code == 200


def test_an_unmapped_path_is_closed_to_readers(secured_client: TestClient) -> None:
    reader = secured_client.get("/not-a-route", headers={"X-API-Key": READER_KEY})
    assert reader.status_code == 403
    admin = secured_client.get("/not-a-route", headers={"X-API-Key": ADMIN_KEY})
    assert admin.status_code == 404


def test_metrics_need_a_key_unless_opted_out() -> None:
    closed = AuthSettings(enabled=True, api_keys=[READER_ENTRY])
    assert ApiKeyMiddleware(lambda *a: None, closed).required_role("/metrics") == "reader"  # type: ignore[arg-type]
    opened = AuthSettings(enabled=True, api_keys=[READER_ENTRY], public_metrics=True)
    assert ApiKeyMiddleware(lambda *a: None, opened).required_role("/metrics") is None  # type: ignore[arg-type]


def test_keys_are_stored_hashed_and_matched() -> None:
    assert READER_KEY not in READER_ENTRY.model_dump_json()
    assert READER_ENTRY.sha256 == hash_key(READER_KEY)
    ring = KeyRing([READER_ENTRY, ADMIN_ENTRY])
    assert ring.match(ADMIN_KEY) == ADMIN_ENTRY
    assert ring.match("cs_guess") is None
    assert role_allows("admin", "reader") and not role_allows("reader", "admin")


def test_key_headers_are_read() -> None:
    assert presented_key([(b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"x-api-key", b"def")]) == "def"
    assert presented_key([(b"authorization", b"Basic abc")]) is None
    assert presented_key([]) is None


def test_auth_settings_refuse_bad_configuration() -> None:
    with pytest.raises(ValueError, match="api_keys is empty"):
        AuthSettings(enabled=True)
    with pytest.raises(ValueError, match="64 hex"):
        ApiKeyEntry(name="x", role="reader", sha256=READER_KEY)
    with pytest.raises(ValueError, match="unique"):
        AuthSettings(api_keys=[READER_ENTRY, READER_ENTRY])


def test_cli_prints_a_working_key_once(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from cerebrascan.cli import main

    result = CliRunner().invoke(main, ["apikey", "create", "--name", "ops", "--role", "admin"])
    assert result.exit_code == 0, result.output
    key = next(line for line in result.output.splitlines() if line.startswith("cs_"))
    entries = yaml.safe_load(result.output.split("CEREBRASCAN_CONFIG file:\n", 1)[1])
    entry = ApiKeyEntry.model_validate(entries[0])
    assert entry.role == "admin" and KeyRing([entry]).match(key) == entry


# ---- over HTTP, real server ----


@pytest.mark.e2e
@pytest.mark.slow
def test_keys_over_http(secured_server) -> None:
    url = secured_server.url
    assert httpx.get(f"{url}/livez", timeout=30).status_code == 200
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401  # a key by default
    assert (
        httpx.get(f"{url}/metrics", headers=secured_server.reader(), timeout=30).status_code == 200
    )
    assert httpx.get(f"{url}/plugins", timeout=30).status_code == 401
    assert (
        httpx.get(f"{url}/plugins", headers=secured_server.reader(), timeout=30).status_code == 200
    )
    denied = httpx.post(f"{url}/admin/plugins/reload", headers=secured_server.reader(), timeout=30)
    assert denied.status_code == 403
    reloaded = httpx.post(
        f"{url}/admin/plugins/reload", headers=secured_server.admin(), json={}, timeout=60
    )
    assert reloaded.status_code == 200
    assert "volumetrics" in {p["name"] for p in reloaded.json()["plugins"]}


@pytest.mark.e2e
@pytest.mark.slow
def test_promotion_hot_swaps_without_failing_a_running_study(
    secured_server, phantom_case: Path
) -> None:
    url = secured_server.url
    reader, admin = secured_server.reader(), secured_server.admin()
    bad = httpx.post(
        f"{url}/admin/models/promote", json={"version": "999"}, headers=admin, timeout=60
    )
    assert bad.status_code == 404 and "999" in bad.json()["error"]

    # A study is running while the model is promoted.
    submitted = httpx.post(
        f"{url}/analyze/submit",
        files=case_files(phantom_case),
        headers=reader,
        timeout=120,
    )
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    # a job may sit queued before it reads its model: promote only once it has started
    wait_until_in_flight(url, secured_server.first_version, admin)
    promoted = httpx.post(
        f"{url}/admin/models/promote",
        json={"version": secured_server.second_version},
        headers=admin,
        timeout=120,
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["previous_version"] == secured_server.first_version
    status = httpx.get(f"{url}/analyze/status", params={"task_id": task_id}, headers=reader)
    # the precondition of this test: the study was still running when the swap finished
    assert status.json()["status"] == "in_progress", status.text

    result = wait_for_result(url, task_id, reader)
    assert result.status_code == 200, result.text
    assert result.json()["model"]["version"] == secured_server.first_version

    after = httpx.post(
        f"{url}/analyze", files=case_files(phantom_case), headers=reader, timeout=300
    )
    assert after.status_code == 200, after.text
    assert after.json()["model"]["version"] == secured_server.second_version
