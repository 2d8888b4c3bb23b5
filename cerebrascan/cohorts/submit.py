"""Submit a cohort to a Ray cluster as a job, and follow it (the service's side; all I/O).

Ray's ``JobSubmissionClient`` is imported when used, so a server without the ``cohort``
extra imports this module fine and answers 501 (:class:`CohortsUnavailableError`).
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from typing import Any

from cerebrascan.cohorts.ledger import PROGRESS_FILE, RESULTS_FILE, SUMMARY_FILE
from cerebrascan.cohorts.locations import MissingObjectError, OutputLocation
from cerebrascan.errors import InputError
from cerebrascan.settings import Settings
from schemas.cohorts import CohortStatus, CohortSubmission

COHORT_ID = re.compile(r"^cohort-[0-9a-f]{16}$")
JOB_KIND = "cerebrascan-cohort"


class CohortsUnavailableError(RuntimeError):
    """Cohorts cannot be submitted from this server (the message says why).

    Args:
        message: what is missing.
        status_code: 501 (the ``cohort`` extra is not installed) or 503 (no Ray cluster is
            configured or it does not answer).
    """

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def job_client(settings: Settings) -> Any:
    """A ``JobSubmissionClient`` on ``cohorts.job_submission_url``.

    Raises:
        CohortsUnavailableError: no URL configured (503), Ray not installed (501), or the
            cluster does not answer (503).
    """
    url = settings.cohorts.job_submission_url
    if not url:
        raise CohortsUnavailableError(
            "cohorts are not configured on this server: set cohorts.job_submission_url "
            "(CEREBRASCAN_COHORTS__JOB_SUBMISSION_URL) to the Ray cluster's dashboard URL",
            503,
        )
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise CohortsUnavailableError(
            "this server lacks the cohort extra (ray); install cerebrascan[cohort] to submit "
            "cohorts from it, or run `cerebrascan cohort run` where Ray is installed",
            501,
        ) from None
    try:
        return JobSubmissionClient(url)
    except (OSError, RuntimeError) as exc:  # requests' ConnectionError is an OSError
        raise CohortsUnavailableError(_unreachable(url, exc), 503) from None


def _unreachable(url: str, exc: Exception) -> str:
    return f"the Ray cluster at {url} does not answer: {type(exc).__name__}: {exc}"


def entrypoint(submission: CohortSubmission) -> str:
    """The shell command the Ray job runs (every value quoted)."""
    words = [
        "cerebrascan",
        "cohort",
        "run",
        "--manifest",
        submission.manifest_uri,
        "--out",
        submission.output_uri,
        "--ray-address",
        "auto",
        "--json-progress",
    ]
    if submission.model:
        words += ["--model", submission.model]
    if submission.actors is not None:
        words += ["--actors", str(submission.actors)]
    if submission.gpus_per_actor is not None:
        words += ["--gpus-per-actor", str(submission.gpus_per_actor)]
    return shlex.join(words)


def submit_cohort(settings: Settings, submission: CohortSubmission) -> str:
    """Start the cohort as a Ray job; returns its id (``cohort-<16 hex>``)."""
    client = job_client(settings)
    cohort_id = f"cohort-{uuid.uuid4().hex[:16]}"
    try:
        client.submit_job(
            entrypoint=entrypoint(submission),
            submission_id=cohort_id,
            metadata={"kind": JOB_KIND, "output_uri": submission.output_uri},
        )
    except OSError as exc:
        raise CohortsUnavailableError(
            _unreachable(str(settings.cohorts.job_submission_url), exc), 503
        ) from None
    return cohort_id


def _job(settings: Settings, cohort_id: str) -> Any:
    if not COHORT_ID.match(cohort_id):
        raise InputError(f"cohort id {cohort_id[:40]!r} is not cohort-<16 hex>", status_code=400)
    client = job_client(settings)
    try:
        info = client.get_job_info(cohort_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise InputError(f"no cohort {cohort_id}", status_code=404) from None
        raise
    except OSError as exc:
        raise CohortsUnavailableError(
            _unreachable(str(settings.cohorts.job_submission_url), exc), 503
        ) from None
    if (info.metadata or {}).get("kind") != JOB_KIND:
        raise InputError(f"no cohort {cohort_id}", status_code=404)
    return info


def cohort_status(settings: Settings, cohort_id: str) -> CohortStatus:
    """The job's status with the run's ``progress.json`` (and ``summary.json`` once done).

    Raises:
        InputError: a malformed id (400) or no such cohort (404).
    """
    info = _job(settings, cohort_id)
    out = OutputLocation(info.metadata["output_uri"], settings.storage)
    status = str(getattr(info.status, "value", info.status))
    return CohortStatus(
        id=cohort_id,
        status=status,  # type: ignore[arg-type]
        message=info.message,
        output_uri=out.uri,
        progress=_json_file(out, PROGRESS_FILE),
        summary=_json_file(out, SUMMARY_FILE) if status == "SUCCEEDED" else None,
        results_url=f"/cohorts/{cohort_id}/results.parquet",
    )


def cohort_results(settings: Settings, cohort_id: str) -> bytes:
    """``results.parquet`` of a finished cohort.

    Raises:
        InputError: bad id (400), no such cohort (404), or not finished yet (409).
    """
    info = _job(settings, cohort_id)
    status = str(getattr(info.status, "value", info.status))
    if status != "SUCCEEDED":
        raise InputError(
            f"cohort {cohort_id} is {status}; its table is written when it has succeeded",
            status_code=409,
        )
    try:
        return OutputLocation(info.metadata["output_uri"], settings.storage).read_bytes(
            RESULTS_FILE
        )
    except MissingObjectError:
        raise InputError(f"cohort {cohort_id} has no {RESULTS_FILE}", status_code=404) from None


def _json_file(out: OutputLocation, name: str) -> dict[str, Any] | None:
    try:
        value = json.loads(out.read_bytes(name))
    except (MissingObjectError, ValueError):
        return None
    return value if isinstance(value, dict) else None
