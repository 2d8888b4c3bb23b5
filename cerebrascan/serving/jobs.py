"""Async analyses through BentoML's task API: how long finished results stay fetchable.

``POST /analyze/submit`` takes the same multipart form as ``POST /analyze`` and answers at once
with ``{"task_id", "status"}``; ``GET /analyze/status?task_id=`` reports ``in_progress``,
``completed`` or ``failed``; ``GET /analyze/get?task_id=`` returns the result (the same JSON, or
the same 4xx error, as the synchronous route). BentoML keeps tasks in a SQLite file
(``BENTOML_RESULT_STORE``, default ``$BENTOML_HOME/task_result.db``) that is emptied when the
server starts, and deletes results older than its retention whenever a task finishes.
"""

from __future__ import annotations

import logging

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
