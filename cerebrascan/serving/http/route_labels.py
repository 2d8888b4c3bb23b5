"""Request metrics and access-log lines carry the route template, never the raw path.

BentoML's request metrics (``RunnerTrafficMetricsMiddleware``) label every request with
``scope["path"]`` and its access log (``AccessLogMiddleware``) prints it, so
``GET /patients/<id>/timeline`` would put a patient id into a Prometheus label and a log line,
and any random path would add a label value. Both middlewares sit outside the service's own
middleware and BentoML has no option for this, so :func:`install_route_labels` replaces the two
classes (BentoML imports them when it builds the app, after ``service.py`` is imported) with
subclasses that show them the route template (``/patients/{patient_id}/timeline``; a path no
route serves becomes :data:`UNMATCHED`). :class:`RawPathRestoreMiddleware`, the service's
outermost middleware, gives the routes back the real path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.routing import BaseRoute, Mount, Route, compile_path

from cerebrascan.serving.asgi import ASGIApp, Receive, Scope, Send

RAW_PATH_KEY = "cerebrascan.raw_path"
"""Scope key holding the real path while the outer BentoML middlewares see the template."""
UNMATCHED = "/{unmatched}"
"""The label of a path that no route serves (so random paths add no label values)."""

_templates: dict[int, list[tuple[re.Pattern[str], str]]] = {}


def _route_patterns(
    routes: Sequence[BaseRoute], prefix: str = ""
) -> list[tuple[re.Pattern[str], str]]:
    """(regex, template) of every route, mounts followed; a mount without routes (static
    files) matches everything under its prefix."""
    patterns: list[tuple[re.Pattern[str], str]] = []
    for route in routes:
        if isinstance(route, Route):
            regex, template, _ = compile_path(prefix + route.path)
            patterns.append((regex, re.sub(r"\{(\w+):[^}]+\}", r"{\1}", template) or "/"))
        elif isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            mount_prefix = prefix + route.path
            if inner:
                patterns.extend(_route_patterns(inner, mount_prefix))
            else:
                static = re.compile(f"^{re.escape(mount_prefix)}(/.*)?$")
                patterns.append((static, f"{mount_prefix}/{{path}}"))
    return patterns


def route_template(path: str, routes: Sequence[BaseRoute]) -> str:
    """The template of the first route of ``routes`` matching ``path``, else :data:`UNMATCHED`.

    Args:
        path: the request path.
        routes: the app's routes (Starlette's ``app.routes``; mounts are followed).
    """
    key = id(routes)
    if key not in _templates:
        if len(_templates) >= 8:  # apps come and go in tests: keep the cache bounded
            _templates.clear()
        _templates[key] = _route_patterns(routes)
    for regex, template in _templates[key]:
        if regex.match(path):
            return template
    return UNMATCHED


def _show_template(scope: Scope) -> None:
    """Put the route template in ``scope["path"]`` (the real path in :data:`RAW_PATH_KEY`)."""
    if scope["type"] not in ("http", "websocket") or RAW_PATH_KEY in scope:
        return
    app = scope.get("app")
    routes = getattr(app, "routes", None)
    if routes is None:  # not under a Starlette app: nothing to match against
        return
    scope[RAW_PATH_KEY] = scope["path"]
    scope["path"] = route_template(scope["path"], routes)


class RawPathRestoreMiddleware:
    """Give the app the real request path again (outermost of the service's middlewares)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if RAW_PATH_KEY in scope:
            scope["path"] = scope.pop(RAW_PATH_KEY)
        await self.app(scope, receive, send)


def install_route_labels() -> None:
    """Make BentoML's request metrics and access log see route templates (once per process).

    Call before BentoML builds the service's app (``service.py`` does at import); add
    :class:`RawPathRestoreMiddleware` as the service's first middleware.
    """
    from bentoml._internal.server.http import access, instruments

    if getattr(instruments.RunnerTrafficMetricsMiddleware, "route_templates", False):
        return

    class TemplatedMetricsMiddleware(instruments.RunnerTrafficMetricsMiddleware):  # type: ignore[misc]
        """BentoML's request metrics, labelled by route template."""

        route_templates = True

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            _show_template(scope)
            await super().__call__(scope, receive, send)

    class TemplatedAccessLogMiddleware(access.AccessLogMiddleware):  # type: ignore[misc]
        """BentoML's access log, printing the route template."""

        route_templates = True

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            _show_template(scope)
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = TemplatedMetricsMiddleware  # type: ignore[misc]
    access.AccessLogMiddleware = TemplatedAccessLogMiddleware  # type: ignore[misc]
