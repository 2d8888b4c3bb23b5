"""ASGI middleware that refuses request bodies over a size limit with 413, before parsing."""

from __future__ import annotations

import json

from cerebrascan.serving.asgi import ASGIApp, Message, Receive, Scope, Send


class UploadLimitMiddleware:
    """Answer 413 when ``Content-Length`` or the streamed body exceeds ``max_bytes``.

    A declared length over the limit is refused without reading the body. A chunked body is
    counted as it streams; once over the limit the app sees a disconnect and whatever it tries
    to answer is replaced by the 413, so memory and disk stay bounded.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, received: int | None) -> None:
        detail = f"request body is over the upload limit of {self.max_bytes} bytes"
        if received is not None:
            detail += f" (declared {received} bytes)"
        body = json.dumps({"error": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length > self.max_bytes:
                await self._reject(send, length)
                return
        state = {"received": 0, "exceeded": False, "answered": False}

        async def limited_receive() -> Message:
            if state["exceeded"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:
                if not state["answered"]:
                    state["answered"] = True
                    await self._reject(send, None)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if state["exceeded"] and not state["answered"]:
            state["answered"] = True
            await self._reject(send, None)
