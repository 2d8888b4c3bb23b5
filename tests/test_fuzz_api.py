"""API fuzzing (schemathesis) of the OpenAPI a real ``bentoml serve`` serves at ``/docs.json``.

Runs against the session's real server of ``tests/secured_server.py`` (API keys on, the
two-service design), so no server is started for it. Every operation gets a bounded number of
schema-conforming and schema-violating requests with a reader key; the admin operations that
cannot change what other tests of the session rely on (a model promotion, a cohort run on Ray)
get them with the admin key too. The only check is schemathesis' ``not_a_server_error``: any 5xx
fails, listed with a curl line to replay it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.schemas import APIOperation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES_PER_MODE = 3
"""Requests per operation and generation mode (positive, negative): bounded, so the whole
API takes well under a minute."""
ADMIN_FUZZED = {
    ("GET", "/audit"),
    ("GET", "/cohorts/{cohort_id}"),
    ("GET", "/cohorts/{cohort_id}/results.parquet"),
    ("DELETE", "/studies/{study_id}"),
    ("DELETE", "/patients/{patient_id}"),
    ("POST", "/studies/{study_id}/dicom/send"),
}
"""Admin operations fuzzed with the admin key: only the ones whose random ids touch nothing."""


@dataclass(frozen=True)
class ServerError:
    """A 5xx answer: the operation, status and how to replay it."""

    operation: str
    status: int
    replay: str


@pytest.fixture(scope="module")
def api_schema(secured_server: Any) -> Any:
    """The OpenAPI the server serves (``GET /docs.json`` needs a reader key)."""
    return schemathesis.openapi.from_url(
        f"{secured_server.url}/docs.json", headers=secured_server.reader(), timeout=60
    )


def _fuzz(
    operation: APIOperation[Any, Any, Any, Any],
    base_url: str,
    headers: dict[str, str],
    session: requests.Session,
) -> tuple[list[ServerError], int]:
    """Send bounded positive and negative cases of one operation; the 5xx answers and the
    number of requests sent."""
    errors: list[ServerError] = []
    sent = [0]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def send(case: Any) -> None:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=120)
            sent[0] += 1
            if response.status_code >= 500:
                errors.append(
                    ServerError(
                        operation=operation.label,
                        status=response.status_code,
                        replay=case.as_curl_command(headers=headers)[:600],
                    )
                )

        try:
            send()
        except Unsatisfiable:
            # nothing to violate: an operation without parameters or body has no negative case
            if mode is GenerationMode.POSITIVE:
                raise
    return errors, sent[0]


def test_no_operation_answers_a_server_error(secured_server: Any, api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {(op.method.upper(), op.path) for op in operations}
    # the spec covers the mounted apps too (studies, patients, admin), not BentoML's APIs only
    assert {("POST", "/analyze"), ("GET", "/studies/{study_id}")} <= labels, labels
    assert ADMIN_FUZZED <= labels, ADMIN_FUZZED - labels
    errors: list[ServerError] = []
    total = 0
    with requests.Session() as session:
        for operation in operations:
            found, sent = _fuzz(operation, secured_server.url, secured_server.reader(), session)
            errors += found
            total += sent
            if (operation.method.upper(), operation.path) in ADMIN_FUZZED:
                found, sent = _fuzz(operation, secured_server.url, secured_server.admin(), session)
                errors += found
                total += sent
    assert total >= len(operations), total
    assert not errors, "\n".join(f"{e.status} {e.operation}: {e.replay}" for e in errors)
