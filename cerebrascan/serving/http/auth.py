"""ASGI middleware: API keys with roles on every HTTP route (``auth`` settings).

A key comes in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Each route needs a role:
``public`` (health checks; ``/metrics`` when ``auth.public_metrics`` is true), ``reader``
(analyses, jobs, studies and their reports, patient timelines, plugins, API docs, ``/metrics``
by default) or
``admin`` (``/admin/*``, and anything not in :data:`ROUTE_ROLES`, so a new route is closed
until it is mapped). No or an unknown key: 401;
a key whose role is too low: 403. Both answer JSON ``{"error": ...}`` naming what is missing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cerebrascan.serving.apikeys import KeyRing, role_allows
from cerebrascan.serving.asgi import ASGIApp, Receive, Scope, Send
from cerebrascan.serving.settings import DEFAULT_TENANT, AuthSettings

Need = Literal["public", "metrics", "reader", "admin"]

logger = logging.getLogger(__name__)

ROLE_STATE_KEY = "api_key_role"
"""``scope["state"]`` key holding the caller's role: the key's, or admin when auth is off (every
route, ``/admin`` included, is open then)."""
TENANT_STATE_KEY = "api_key_tenant"
"""``scope["state"]`` key holding the caller's tenant: the key's, or ``default`` when auth is
off (every request is then the default tenant's)."""
NAME_STATE_KEY = "api_key_name"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's name (None with auth off), role and tenant."""

    key_name: str | None
    role: str
    tenant: str


def caller_of(scope: Mapping[str, Any]) -> Caller:
    """The caller :class:`ApiKeyMiddleware` recorded in ``scope["state"]`` (the default
    tenant's admin when no check ran: auth off)."""
    state = scope.get("state") or {}
    return Caller(
        key_name=state.get(NAME_STATE_KEY),
        role=state.get(ROLE_STATE_KEY, "admin"),
        tenant=state.get(TENANT_STATE_KEY, DEFAULT_TENANT),
    )


# (path regex, role). First match wins. "metrics" is public or reader by auth.public_metrics.
ROUTE_ROLES: tuple[tuple[str, Need], ...] = (
    (r"/(livez|readyz|healthz)", "public"),
    (r"/metrics", "metrics"),
    (r"/analyze(/(submit|status|get|retry|cancel))?", "reader"),
    # DICOM studies: the analysis (and its job routes) and the header-only inventory
    (r"/analyze/dicom(/(submit|status|get|retry|cancel))?", "reader"),
    (r"/dicom/inspect", "reader"),
    (r"/studies/[^/]+(/segmentation|/artefacts/[^/]+|/report|/report/overlay\.png)?", "reader"),
    (r"/studies/[^/]+/dicom/(seg|sr|pdf)", "reader"),
    # sending results to a PACS writes to another system: admin only
    (r"/studies/[^/]+/dicom/send", "admin"),
    # the viewer page and NiiVue hold no study data; the page's fetches send the key
    (r"/studies/viewer/niivue-[0-9.]+\.umd\.js|/studies/[0-9a-f]{32}/viewer", "public"),
    (r"/studies/[^/]+/views/[^/]+(/[^/]+)?", "reader"),
    (r"/palette", "reader"),
    (r"/patients/[^/]+/timeline", "reader"),
    (r"/plugins", "reader"),
    (r"/|/docs\.json|/schema\.json|/static_content/.*", "reader"),
    (r"/admin/.*", "admin"),
    # the audit trail of patient-linked reads and writes (pseudonyms only): admin only
    (r"/audit", "admin"),
    # cohorts submit work to a Ray cluster and read a whole cohort's table: admin only
    (r"/cohorts/?|/cohorts/[^/]+(/results\.parquet)?", "admin"),
)
_COMPILED = tuple((re.compile(f"^(?:{pattern})$"), need) for pattern, need in ROUTE_ROLES)
# (method, path regex, role), checked before ROUTE_ROLES: deleting a study or a patient is an
# admin's act, though a reader may read the same path
METHOD_ROLES: tuple[tuple[str, str, Need], ...] = (
    ("DELETE", r"/studies/[^/]+|/patients/[^/]+", "admin"),
)
_METHOD_COMPILED = tuple(
    (method, re.compile(f"^(?:{pattern})$"), need) for method, pattern, need in METHOD_ROLES
)


def route_need(path: str, method: str | None = None) -> Need | None:
    """The role ``method path`` needs by :data:`METHOD_ROLES` (when ``method`` is given), then
    :data:`ROUTE_ROLES`; None if no entry maps it."""
    if method is not None:
        for verb, pattern, need in _METHOD_COMPILED:
            if method.upper() == verb and pattern.match(path):
                return need
    for pattern, need in _COMPILED:
        if pattern.match(path):
            return need
    return None


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The API key in ``Authorization: Bearer`` or ``X-API-Key``, or None."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif lowered == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class ApiKeyMiddleware:
    """Answer 401 / 403 before the app sees a request without a suitable key.

    Args:
        app: the ASGI app to protect.
        settings: the ``auth`` settings; when ``enabled`` is false every request passes.
    """

    def __init__(self, app: ASGIApp, settings: AuthSettings) -> None:
        self.app = app
        self.settings = settings
        self.keys = KeyRing(settings.api_keys)
        if not settings.enabled:
            logger.warning(
                "API-key access control is off (auth.enabled=false): every route is open"
            )

    def required_role(self, path: str, method: str | None = None) -> str | None:
        """The role ``method path`` needs, or None if it is public."""
        need = route_need(path, method)
        if need == "public" or (need == "metrics" and self.settings.public_metrics):
            return None
        if need == "metrics":  # a scraper's key needs no admin rights
            return "reader"
        if need in ("reader", "admin"):
            return need
        return "admin"  # every unmapped path

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="cerebrascan"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.settings.enabled:
            if scope["type"] == "http":  # an enclosing, enabled check has set it already
                state = scope.setdefault("state", {})
                state.setdefault(ROLE_STATE_KEY, "admin")
                state.setdefault(TENANT_STATE_KEY, DEFAULT_TENANT)
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        needed = self.required_role(path, scope.get("method"))
        if needed is None:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope.get("headers", []))
        if key is None:
            await self._refuse(
                send, 401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
            return
        entry = self.keys.match(key)
        if entry is None:
            await self._refuse(send, 401, "invalid API key")
            return
        if not role_allows(entry.role, needed):
            await self._refuse(
                send,
                403,
                f"API key {entry.name!r} has role {entry.role!r}; {path} needs role {needed!r}",
            )
            return
        scope.setdefault("state", {})[NAME_STATE_KEY] = entry.name
        scope["state"][ROLE_STATE_KEY] = entry.role
        scope["state"][TENANT_STATE_KEY] = entry.tenant
        await self.app(scope, receive, send)
