"""Async analyses over HTTP: submit, poll, fetch; failures and unknown ids; result retention.

Runs against the real server of ``tests/secured_server.py`` (reader key, results kept
:data:`JOB_RETENTION_S` seconds).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from cerebrascan.serving.jobs import configure_job_retention
from cerebrascan.serving.settings import JobSettings
from tests.secured_server import JOB_RETENTION_S, MODALITIES, case_files, wait_for_result

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GARBAGE = {m: (f"{m}.nii", b"not an image at all" * 30, "application/gzip") for m in MODALITIES}


def _submit(server, files: dict) -> str:
    response = httpx.post(
        f"{server.url}/analyze/submit", files=files, headers=server.reader(), timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "in_progress"
    return str(body["task_id"])


def test_submitted_study_is_fetched_later(
    secured_server, phantom_case: Path, phantom_truth: dict
) -> None:
    task_id = _submit(secured_server, case_files(phantom_case))
    # the submitting connection is closed; the job goes on and its result waits
    result = wait_for_result(secured_server.url, task_id, secured_server.reader())
    assert result.status_code == 200, result.text
    answer = result.json()
    assert answer["volumes_ml"]["WT"] == pytest.approx(phantom_truth["volumes_ml"]["WT"], rel=0.05)
    status = httpx.get(
        f"{secured_server.url}/analyze/status",
        params={"task_id": task_id},
        headers=secured_server.reader(),
    ).json()
    assert status["status"] == "completed" and status["task_id"] == task_id
    # the same study is readable like one analysed synchronously
    stored = httpx.get(
        f"{secured_server.url}/studies/{answer['study_id']}", headers=secured_server.reader()
    )
    assert stored.status_code == 200 and stored.json()["study_id"] == answer["study_id"]


def test_failed_job_keeps_its_4xx_answer(secured_server) -> None:
    task_id = _submit(secured_server, GARBAGE)
    result = wait_for_result(secured_server.url, task_id, secured_server.reader())
    assert result.status_code == 400
    assert "not a NIfTI" in result.text
    status = httpx.get(
        f"{secured_server.url}/analyze/status",
        params={"task_id": task_id},
        headers=secured_server.reader(),
    )
    assert status.json()["status"] == "failed"


@pytest.mark.parametrize("route", ["status", "get"])
def test_unknown_or_missing_task_id_is_4xx(secured_server, route: str) -> None:
    url = f"{secured_server.url}/analyze/{route}"
    unknown = httpx.get(url, params={"task_id": "f" * 32}, headers=secured_server.reader())
    assert unknown.status_code == 404
    assert "task_id not found" in unknown.text
    missing = httpx.get(url, headers=secured_server.reader())
    assert missing.status_code == 400
    assert "task_id is required" in missing.text


def test_jobs_need_a_key(secured_server) -> None:
    submit = httpx.post(f"{secured_server.url}/analyze/submit", files=GARBAGE, timeout=60)
    assert submit.status_code == 401
    status = httpx.get(f"{secured_server.url}/analyze/status", params={"task_id": "x"})
    assert status.status_code == 401


def test_results_expire_after_the_retention(secured_server) -> None:
    first = _submit(secured_server, GARBAGE)
    assert wait_for_result(secured_server.url, first, secured_server.reader()).status_code == 400
    time.sleep(JOB_RETENTION_S + 1)
    # BentoML deletes expired results when a later job finishes
    second = _submit(secured_server, GARBAGE)
    assert wait_for_result(secured_server.url, second, secured_server.reader()).status_code == 400
    expired = httpx.get(
        f"{secured_server.url}/analyze/get",
        params={"task_id": first},
        headers=secured_server.reader(),
    )
    assert expired.status_code == 404


def test_retention_setting_reaches_bentoml_task_store() -> None:
    from _bentoml_impl.tasks.result import Sqlite3Store

    before = Sqlite3Store.RESULT_RETENTION
    try:
        configure_job_retention(JobSettings(result_retention_s=123))
        assert Sqlite3Store.RESULT_RETENTION == 123
    finally:
        Sqlite3Store.RESULT_RETENTION = before
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        JobSettings(result_retention_s=0)
