"""Admin routes, mounted at ``/admin`` (role ``admin`` in :mod:`cerebrascan.serving.http.auth`).

``POST /admin/models/promote`` ``{"version": "3"}`` (optionally ``"name"``: the served model by
default) loads that registry version in the runner, runs the reference tile through its engine
and only then points the served alias (``champion``) at it and hot-swaps the model: studies
already running finish on the old one; a version that does not load or answers wrongly is a
409 with the reason, the alias unmoved. With ``"name"`` one of the classifier
models (``classifiers.model_names``) it moves ``classifiers.alias`` instead, checks that the
version loads, and rebuilds the analyzers so ``classification`` / ``radiogenomics`` serve it.
``POST /admin/plugins/reload`` reloads the analyzer plugins (and so re-resolves the classifier
models, e.g. after ``cerebrascan registry ensure-default`` or ``cerebrascan classifiers
register`` moved an alias from another process). Every admin route takes ``Content-Type:
application/json`` only (415 otherwise), so a web page cannot drive it through a browser.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mlflow.exceptions import MlflowException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cerebrascan.classifiers.model_registry import ClassifierNotAvailableError, resolve_classifier
from cerebrascan.errors import InputError
from cerebrascan.observability import record_serving_model
from cerebrascan.pipeline import AnalysisPipeline
from cerebrascan.registry import (
    ModelNotAvailableError,
    client_for,
    record_last_good,
    resolve_model_version,
)
from cerebrascan.settings import Settings
from plugins.host import AnalyzerHost
from runners.errors import EngineCheckError

logger = logging.getLogger(__name__)


def _error(message: str, status_code: int) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


def json_content_type_error(request: Request) -> Response | None:
    """415 unless the request says ``Content-Type: application/json``, else None.

    A web page can make a browser POST ``text/plain`` (or a form) to a server on the user's
    machine without a CORS preflight, but not ``application/json``: requiring it keeps a page
    from promoting a model or reloading plugins through the browser.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        return None
    shown = media_type[:40] or "none"
    return _error(
        f"admin routes take Content-Type: application/json, got {shown!r} (send a JSON body, "
        "'{}' when there is nothing to say)",
        415,
    )


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
) -> dict[str, str | None]:
    """Point ``settings.model_alias`` at ``name`` version ``version`` and serve it; for a
    classifier model, see :func:`promote_classifier`.

    Raises:
        InputError: ``name`` is neither the served model nor a classifier (400) or has no such
            version (404).
        ModelNotAvailableError: the version's files are bad (checksum, spec); the alias is not
            moved.
        EngineCheckError: the version's engine does not build or answers the reference tile
            wrongly; the alias is not moved and the old version keeps serving.
        ClassifierNotAvailableError: a classifier version's files are bad; the alias is moved
            back.
    """
    if name in settings.classifiers.model_names.values():
        return promote_classifier(settings, pipeline.host, name, version)
    if name != settings.model_name:
        raise InputError(
            f"name {name!r} is not the served model {settings.model_name!r} nor a classifier "
            f"({sorted(settings.classifiers.model_names.values())})",
            status_code=400,
        )
    client = client_for(settings)
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise InputError(f"model {name!r} has no version {version!r}", status_code=404) from None
    previous = pipeline.serving[0]
    # the version is downloaded, built and run on the reference tile (in the runner service
    # when there is one) before the alias moves: a version that cannot serve never does
    model = replace(resolve_model_version(settings, name, version), alias=settings.model_alias)
    runner = pipeline.load_checked_runner(model)
    client.set_registered_model_alias(name, settings.model_alias, version)
    pipeline.swap_model(model, runner)
    record_last_good(settings, model)
    record_serving_model(model.name, model.version, model.alias)
    return {
        "name": name,
        "alias": settings.model_alias,
        "version": model.version,
        "previous_version": previous.version,
    }


def promote_classifier(
    settings: Settings, host: AnalyzerHost, name: str, version: str
) -> dict[str, str | None]:
    """Point ``classifiers.alias`` of classifier ``name`` at ``version`` and serve it.

    The version is downloaded and checked before the analyzers are rebuilt (they resolve their
    models when built); a study already running finishes with the old models.

    Returns:
        ``name``, ``alias``, the new ``version`` and ``previous_version`` (None if the alias
        pointed nowhere).

    Raises:
        InputError: ``name`` has no such version (404).
        ClassifierNotAvailableError: the version's files are bad; the alias is moved back.
    """
    task = next(t for t, n in settings.classifiers.model_names.items() if n == name)
    alias = settings.classifiers.alias
    client = client_for(settings)
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise InputError(f"model {name!r} has no version {version!r}", status_code=404) from None
    try:
        previous: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, version)
    try:
        loaded = resolve_classifier(settings, task)
    except Exception:  # any load failure: put the alias back, then re-raise
        if previous is not None:
            client.set_registered_model_alias(name, alias, previous)
        else:
            client.delete_registered_model_alias(name, alias)
        raise
    host.reload()
    return {"name": name, "alias": alias, "version": loaded.version, "previous_version": previous}


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
        if (refused := json_content_type_error(request)) is not None:
            return refused
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
        except (ModelNotAvailableError, ClassifierNotAvailableError, EngineCheckError) as exc:
            return _error(f"version not promoted, the old one still serves: {exc}", 409)
        logger.info("promoted %s version %s to %s", name, result["version"], result["alias"])
        return JSONResponse(result)

    async def reload_route(request: Request) -> Response:
        if (refused := json_content_type_error(request)) is not None:
            return refused
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
