"""Cohort routes, mounted at ``/cohorts`` (role ``admin``: not in the auth table's public list).

``POST /cohorts`` ``{"manifest_uri": ..., "output_uri": ..., "model": "name@alias"}`` submits
``cerebrascan cohort run`` to the Ray cluster at ``cohorts.job_submission_url`` as a Ray job
(202 with its id); ``GET /cohorts/{id}`` reports the job's status and the run's progress;
``GET /cohorts/{id}/results.parquet`` serves the table once it has succeeded. Ray is imported
only when a route runs: without the ``cohort`` extra the routes answer 501, without a
configured cluster 503, each with a message saying what to set.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cerebrascan.cohorts.submit import (
    CohortsUnavailableError,
    cohort_results,
    cohort_status,
    submit_cohort,
)
from cerebrascan.errors import InputError
from cerebrascan.serving.http.openapi import Operation, describes
from cerebrascan.settings import Settings
from schemas.cohorts import CohortStatus, CohortSubmission, CohortSubmitted

logger = logging.getLogger(__name__)

PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


def _error(message: str, status_code: int) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


def cohorts_app(settings: Settings) -> Starlette:
    """Routes ``POST /``, ``GET /{cohort_id}``, ``GET /{cohort_id}/results.parquet``.

    Args:
        settings: the server settings (``cohorts.job_submission_url``, S3 ``storage``).
    """

    @describes(
        Operation(
            "Submit a cohort (manifest URI, output URI, model alias) to the Ray cluster as a "
            "job (admin)",
            response=CohortSubmitted,
            request=CohortSubmission,
            errors=(400, 501, 503),
        )
    )
    async def submit_route(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            submission = CohortSubmission.model_validate(body)
        except ValueError as exc:  # JSON or validation (ValidationError is a ValueError)
            message = (
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                if isinstance(exc, ValidationError)
                else f"request body is not JSON: {exc}"
            )
            return _error(message, 400)
        try:
            cohort_id = await run_in_threadpool(submit_cohort, settings, submission)
        except CohortsUnavailableError as exc:
            return _error(str(exc), exc.status_code)
        logger.info("cohort %s submitted to the Ray cluster", cohort_id)
        answer = CohortSubmitted(
            id=cohort_id,
            status_url=f"/cohorts/{cohort_id}",
            results_url=f"/cohorts/{cohort_id}/results.parquet",
        )
        return JSONResponse(answer.model_dump(), status_code=202)

    @describes(
        Operation(
            "A cohort's Ray job status, its progress (done, failed, rate, ETA) and summary",
            response=CohortStatus,
            errors=(400, 404, 501, 503),
        )
    )
    async def status_route(request: Request) -> Response:
        try:
            status = await run_in_threadpool(
                cohort_status, settings, request.path_params["cohort_id"]
            )
        except InputError as exc:
            return _error(str(exc), exc.status_code)
        except CohortsUnavailableError as exc:
            return _error(str(exc), exc.status_code)
        return JSONResponse(status.model_dump(mode="json"))

    @describes(
        Operation(
            "A finished cohort's results table (Parquet, one row per study)",
            media_types=(PARQUET_MEDIA_TYPE,),
            errors=(400, 404, 409, 501, 503),
        )
    )
    async def results_route(request: Request) -> Response:
        try:
            table = await run_in_threadpool(
                cohort_results, settings, request.path_params["cohort_id"]
            )
        except InputError as exc:
            return _error(str(exc), exc.status_code)
        except CohortsUnavailableError as exc:
            return _error(str(exc), exc.status_code)
        return Response(table, media_type=PARQUET_MEDIA_TYPE)

    return Starlette(
        routes=[
            Route("/", submit_route, methods=["POST"]),
            Route("/{cohort_id}", status_route, methods=["GET"]),
            Route("/{cohort_id}/results.parquet", results_route, methods=["GET"]),
        ]
    )
