"""``GET /plugins``: the installed analyzer plugins, mounted into the BentoML service."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.host import AnalyzerHost


def plugins_app(host: AnalyzerHost) -> Starlette:
    """Route ``GET /plugins``: plugins, versions, analyzers and their result schemas.

    Mount it at ``/``: BentoML's mounts fall through to the next route when none of theirs
    matches, so it serves exactly ``/plugins`` and nothing else.
    """

    async def listing(request: Request) -> Response:
        return JSONResponse(host.listing().model_dump(mode="json"))

    return Starlette(routes=[Route("/plugins", listing, methods=["GET"])])
