"""JSON server logs carrying a per-request id (``logging`` settings).

:class:`RequestIdMiddleware` takes the id from the ``X-Request-ID`` header (when it is a plain
token) or makes one, keeps it in a context variable for the request's lifetime and echoes it in
the response's ``X-Request-ID``. :class:`JsonFormatter` writes one JSON object per line with that
id. Log messages of this project never carry patient ids or upload file names; the formatter
adds no request data beyond the id.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from cerebrascan.serving.asgi import ASGIApp, Message, Receive, Scope, Send
from cerebrascan.serving.settings import LogSettings

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cerebrascan_request_id", default=None
)
OUR_LOGGERS = ("cerebrascan", "plugins", "runners", "service")
BENTOML_SERVER_HANDLER = "tracehandler"  # bentoml._internal.log.SERVER_LOGGING_CONFIG


def current_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside one."""
    return _request_id.get()


def is_plain_request_id(candidate: str) -> bool:
    """Whether ``candidate`` may be used as a request id (a plain token, 1-128 characters)."""
    return bool(_VALID_REQUEST_ID.match(candidate))


#: The pattern a request id must match (for schema fields that carry one).
REQUEST_ID_PATTERN = _VALID_REQUEST_ID.pattern


@contextlib.contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Bind ``request_id`` for the log lines written inside the block (:class:`JsonFormatter`)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` if it is a plain token, else a new random id."""
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1").strip()
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Bind a request id to each HTTP request and echo it in ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        token = _request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": current_request_id(),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: LogSettings) -> None:
    """Set our loggers' level and, for ``format: json``, JSON on every handler in the process.

    BentoML configures its handlers before it imports the service; this switches their
    formatter, so BentoML's own lines (access log included) come out as JSON too.
    """
    level = getattr(logging, settings.level)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if settings.format != "json":
        return
    # MLflow's download progress bars would interleave non-JSON text with the log lines
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    formatter = JsonFormatter()
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            # only the server's handlers (BentoML names its one "tracehandler"), so a test
            # runner's or an embedding application's handlers keep their format
            if handler.get_name() == BENTOML_SERVER_HANDLER:
                handler.setFormatter(formatter)
