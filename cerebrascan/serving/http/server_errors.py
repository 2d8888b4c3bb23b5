"""Say why in the body of the 5xx answers a client can act on (503: retry; 507: free space).

BentoML answers every error of 500 or more with one generic body ("An unexpected error has
occurred, please check the server log."), whatever the exception said. For the two statuses the
service raises on purpose that body is replaced by what happened and what to do; any other 5xx,
and a 503/507 with a body of its own (``/readyz``), pass through untouched.
"""

from __future__ import annotations

import json

from cerebrascan.serving.asgi import ASGIApp, Message, Receive, Scope, Send

BENTOML_GENERIC_ERROR = "An unexpected error has occurred, please check the server log."
SERVER_ERROR_MESSAGES = {
    503: "the runner service cannot be reached (starting, restarting or gone): the study was "
    "not analysed and nothing was stored; retry in a few seconds",
    507: "the server's data folder is full: the study was analysed but could not be stored, "
    "and nothing of it was kept; retry once the operator has freed space",
}
"""Status -> the body's ``error`` in place of BentoML's generic text."""


class ServerErrorMessageMiddleware:
    """Replace BentoML's generic body of a 503 or 507 with :data:`SERVER_ERROR_MESSAGES`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def send_explained(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] in SERVER_ERROR_MESSAGES:
                    held.append(message)  # wait for the body to know whether it is generic
                    return
                await send(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            held.append(message)
            if message.get("more_body", False):
                return
            start, bodies = held[0], held[1:]
            held.clear()
            body = b"".join(part.get("body", b"") for part in bodies)
            if BENTOML_GENERIC_ERROR.encode() in body:
                body = json.dumps({"error": SERVER_ERROR_MESSAGES[start["status"]]}).encode()
                headers = [
                    (name, value)
                    for name, value in start.get("headers", [])
                    if name.lower() not in (b"content-length", b"content-type")
                ]
                headers += [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ]
                start = {**start, "headers": headers}
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, send_explained)
