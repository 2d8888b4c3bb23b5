"""Render jobs for the long study views (surfaces and videos): submitted, rendered in the
background into the study's view cache, then served by the view's own ``GET`` route.

The work is bounded: one render at a time (the views share the CPU with studies), at most
:data:`MAX_PENDING` jobs waiting (then 429), and at most :data:`MAX_KEPT` finished jobs
remembered (the oldest forgotten first). A job's record holds no patient data: the study id,
the view and, on failure, the view's own error message.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cerebrascan.errors import InputError

logger = logging.getLogger(__name__)

MAX_PENDING = 16
"""Jobs queued or running at once; one more is refused with 429."""
MAX_KEPT = 256
"""Finished jobs remembered for their status route."""

JobStatus = Literal["queued", "running", "done", "failed"]


@dataclass
class RenderJob:
    """One render: what it renders, where its result is served, how it went."""

    job_id: str
    study_id: str
    result_url: str
    status: JobStatus = "queued"
    error: str | None = None
    error_status: int | None = None
    future: Future[Path] | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, object]:
        """The status route's answer."""
        return {
            "job_id": self.job_id,
            "study_id": self.study_id,
            "status": self.status,
            "result_url": self.result_url,
            "error": self.error,
            "error_status": self.error_status,
        }


class RenderJobs:
    """The jobs of one process (one worker thread renders them in order)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="view-render")
        self._jobs: OrderedDict[str, RenderJob] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, study_id: str, result_url: str, render: Callable[[], Path]) -> RenderJob:
        """Queue ``render`` (its parameters already checked by the caller).

        Raises:
            InputError: 429 when :data:`MAX_PENDING` jobs are queued or running.
        """
        job = RenderJob(job_id=uuid.uuid4().hex, study_id=study_id, result_url=result_url)
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))
            if pending >= MAX_PENDING:
                raise InputError(
                    f"{pending} render jobs are already queued or running (limit {MAX_PENDING}); "
                    "retry later",
                    status_code=429,
                )
            self._jobs[job.job_id] = job
            self._forget_oldest_finished()
            job.future = self._executor.submit(self._run, job, render)
        return job

    def get(self, study_id: str, job_id: str) -> RenderJob:
        """The job ``job_id`` of ``study_id``.

        Raises:
            InputError: 404 for an unknown job or one of another study.
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.study_id != study_id:
            raise InputError(f"no render job {job_id[:40]!r} for this study", status_code=404)
        return job

    def _run(self, job: RenderJob, render: Callable[[], Path]) -> Path:
        job.status = "running"
        try:
            path = render()
        except InputError as exc:
            job.status, job.error, job.error_status = "failed", str(exc), exc.status_code
            raise
        except Exception:  # the job's record says it failed; the log has the traceback
            logger.exception("render job %s failed", job.job_id)
            job.status, job.error, job.error_status = "failed", "the render failed", 500
            raise
        job.status = "done"
        return path

    def _forget_oldest_finished(self) -> None:
        while len(self._jobs) > MAX_KEPT:
            for job_id, job in self._jobs.items():
                if job.status in ("done", "failed"):
                    del self._jobs[job_id]
                    break
            else:
                return
