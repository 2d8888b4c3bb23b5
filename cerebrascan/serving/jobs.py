"""Async analyses through BentoML's task API: how long finished results stay fetchable.

``POST /analyze/submit`` takes the same multipart form as ``POST /analyze`` and answers at once
with ``{"task_id", "status"}``; ``GET /analyze/status?task_id=`` reports ``in_progress``,
``completed`` or ``failed``; ``GET /analyze/get?task_id=`` returns the result (the same JSON, or
the same 4xx error, as the synchronous route). BentoML keeps tasks in a SQLite file
(``BENTOML_RESULT_STORE``, default ``$BENTOML_HOME/task_result.db``) that is emptied when the
server starts, and deletes results older than its retention whenever a task finishes.
:class:`JobQueueLimitMiddleware` caps the jobs waiting or running (``jobs.max_queued``, 429).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread

from cerebrascan.serving.asgi import ASGIApp, Receive, Scope, Send
from cerebrascan.serving.settings import JobSettings

logger = logging.getLogger(__name__)


def configure_job_retention(settings: JobSettings) -> None:
    """Keep finished task results for ``settings.result_retention_s`` (BentoML's default: 24 h).

    BentoML 1.4 reads the retention from the class attribute ``Sqlite3Store.RESULT_RETENTION``
    each time a task finishes, and offers no setting for it, so it is set here, in the worker
    process, when the service module is imported.
    """
    from _bentoml_impl.tasks.result import Sqlite3Store

    Sqlite3Store.RESULT_RETENTION = settings.result_retention_s
    logger.debug("task results are kept for %d s", settings.result_retention_s)


JOB_STARTING_PATHS = frozenset(
    {"/analyze/submit", "/analyze/retry", "/analyze/dicom/submit", "/analyze/dicom/retry"}
)
"""Routes that add a job to BentoML's task store."""
UNFINISHED_STATUSES = ("pending", "in_progress")
"""``_bentoml_impl.tasks.result.ResultStatus`` values of a job not finished yet."""


def unfinished_jobs(store_file: str) -> int:
    """How many jobs of BentoML's task store (a SQLite file) are waiting or running.

    A store not created yet holds none.
    """
    if store_file != ":memory:" and not Path(store_file).is_file():
        return 0
    # read-only: BentoML owns the file and writes it (WAL mode lets this read alongside)
    uri = f"file:{store_file}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as connection:
        try:
            row = connection.execute(
                "SELECT COUNT(*) FROM result WHERE status IN (?, ?)", UNFINISHED_STATUSES
            ).fetchone()
        except sqlite3.OperationalError:  # no table yet: BentoML makes it at start-up
            return 0
    return int(row[0])


def default_store_file() -> str:
    """The task store BentoML uses in this process (``BENTOML_RESULT_STORE`` or its home)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.result_store_file.get())


class JobQueueLimitMiddleware:
    """Answer 429 to a new job while ``max_queued`` jobs are waiting or running.

    Args:
        app: the ASGI app.
        max_queued: ``jobs.max_queued``.
        store_file: returns the task store's path (default: BentoML's).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_queued: int,
        store_file: Callable[[], str] = default_store_file,
    ) -> None:
        self.app = app
        self.max_queued = max_queued
        self.store_file = store_file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope["path"] not in JOB_STARTING_PATHS
        ):
            await self.app(scope, receive, send)
            return
        queued = await anyio.to_thread.run_sync(unfinished_jobs, self.store_file())
        if queued < self.max_queued:
            await self.app(scope, receive, send)
            return
        logger.warning("job refused: %d jobs waiting or running (jobs.max_queued)", queued)
        body = json.dumps(
            {
                "error": f"{queued} jobs are waiting or running, the most this server queues "
                f"(jobs.max_queued={self.max_queued}); retry later"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"retry-after", b"30"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
