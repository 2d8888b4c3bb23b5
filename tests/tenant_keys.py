"""API keys of two tenants for the tenant and audit tests: a reader and an admin each, checked
by an enabled key check wrapped around the session's started app (as tests/test_auth.py does:
a second started BentoML app would register the Prometheus series twice)."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from cerebrascan.serving.apikeys import new_key
from cerebrascan.serving.http.auth import ApiKeyMiddleware
from cerebrascan.serving.settings import AuthSettings

TENANT_A, TENANT_B = "site-a", "site-b"
A_READER, A_READER_ENTRY = new_key("a-reader", "reader", TENANT_A)
A_ADMIN, A_ADMIN_ENTRY = new_key("a-admin", "admin", TENANT_A)
B_READER, B_READER_ENTRY = new_key("b-reader", "reader", TENANT_B)
B_ADMIN, B_ADMIN_ENTRY = new_key("b-admin", "admin", TENANT_B)
ENTRIES = [A_READER_ENTRY, A_ADMIN_ENTRY, B_READER_ENTRY, B_ADMIN_ENTRY]


def tenant_client(asgi_client: Any) -> TestClient:
    """The session's app behind a key check that knows both tenants' keys."""
    settings = AuthSettings(enabled=True, api_keys=ENTRIES)
    return TestClient(ApiKeyMiddleware(asgi_client.app, settings))


def key(value: str) -> dict[str, str]:
    """Headers sending ``value``."""
    return {"Authorization": f"Bearer {value}"}
