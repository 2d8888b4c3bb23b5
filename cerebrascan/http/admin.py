"""Admin routes, mounted at ``/admin`` (role ``admin`` in :mod:`cerebrascan.http.auth`).

``POST /admin/models/promote`` ``{"version": "3"}`` (optionally ``"name"``, which must be the
served model) points the served alias (``champion``) at that registry version and hot-swaps the
model: studies already running finish on the old one. ``POST /admin/plugins/reload`` reloads the
analyzer plugins.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cerebrascan.analysis import AnalysisPipeline
from cerebrascan.errors import InputError
from cerebrascan.observability import record_serving_model
from cerebrascan.registry import ModelNotAvailableError, client_for, resolve_model
from cerebrascan.settings import Settings
from plugins.host import AnalyzerHost

logger = logging.getLogger(__name__)


def _error(message: str, status_code: int) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise InputError(f"request body is not JSON: {exc}", status_code=400) from None
    if not isinstance(body, dict):
        raise InputError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def promote(
    settings: Settings, pipeline: AnalysisPipeline, name: str, version: str
) -> dict[str, str]:
    """Point ``settings.model_alias`` at ``name`` version ``version`` and serve it.

    Raises:
        InputError: ``name`` is not the served model (400) or has no such version (404).
        ModelNotAvailableError: the version's files are bad; the alias is moved back.
    """
    if name != settings.model_name:
        raise InputError(
            f"name {name!r} is not the served model {settings.model_name!r}", status_code=400
        )
    client = client_for(settings)
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise InputError(f"model {name!r} has no version {version!r}", status_code=404) from None
    previous = pipeline.serving[0]
    client.set_registered_model_alias(name, settings.model_alias, version)
    try:
        model = resolve_model(settings)
        pipeline.swap_model(model)
    except Exception:  # any load failure: put the alias back, then re-raise
        client.set_registered_model_alias(name, settings.model_alias, previous.version)
        raise
    record_serving_model(model.name, model.version, model.alias)
    return {
        "name": name,
        "alias": settings.model_alias,
        "version": model.version,
        "previous_version": previous.version,
    }


def admin_app(
    settings: Settings, host: AnalyzerHost, pipeline: Callable[[], AnalysisPipeline | None]
) -> Starlette:
    """Routes ``POST /models/promote`` and ``POST /plugins/reload`` (mount at ``/admin``).

    Args:
        settings: the server settings (registry, served name and alias).
        host: the analyzer host to reload.
        pipeline: returns the serving pipeline (None before the service has started).
    """

    async def promote_route(request: Request) -> Response:
        serving = pipeline()
        if serving is None:
            return _error("the model is not loaded yet", 503)
        try:
            body = await _json_object(request)
            version = body.get("version")
            name = body.get("name", settings.model_name)
            if not isinstance(version, str | int) or isinstance(version, bool) or not str(version):
                raise InputError(f"'version' must be a registry version number, got {version!r}")
            if not isinstance(name, str):
                raise InputError(f"'name' must be a string, got {name!r}")
            result = await run_in_threadpool(promote, settings, serving, name, str(version))
        except InputError as exc:
            return _error(str(exc), exc.status_code)
        except ModelNotAvailableError as exc:
            return _error(f"version not promoted, the old one still serves: {exc}", 409)
        logger.info("promoted %s version %s to %s", name, result["version"], result["alias"])
        return JSONResponse(result)

    async def reload_route(request: Request) -> Response:
        await run_in_threadpool(host.reload)
        listing = host.listing().model_dump(mode="json")
        logger.info("plugins reloaded: %s", [p["name"] for p in listing["plugins"]])
        return JSONResponse(listing)

    return Starlette(
        routes=[
            Route("/models/promote", promote_route, methods=["POST"]),
            Route("/plugins/reload", reload_route, methods=["POST"]),
        ]
    )
