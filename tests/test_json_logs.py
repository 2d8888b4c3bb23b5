"""Server logs are JSON lines with the request id, and never carry patient ids or file names.

The request goes to the real server of ``tests/secured_server.py`` (JSON logs on); the file
names and the patient id sent look like a patient's name on purpose.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cerebrascan.serving.logs import JsonFormatter, request_id_from
from tests.secured_server import case_files

PATIENT_NAME = "DOE^JOHNATHAN"
FILE_PREFIX = "Doe_Johnathan_19700101_"


def _log_entries(path: Path) -> list[dict]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


@pytest.mark.e2e
@pytest.mark.slow
def test_request_logs_are_json_with_the_request_id_and_no_patient_data(
    secured_server, phantom_case: Path
) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{secured_server.url}/analyze",
        files=case_files(phantom_case, prefix=FILE_PREFIX),
        data={"options": json.dumps({"patient_id": PATIENT_NAME})},
        headers={**secured_server.reader(), "X-Request-ID": request_id},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    study_id = response.json()["study_id"]

    log_path = secured_server.server.log_path
    # BentoML writes its access line once the response has gone out: wait for it
    deadline = time.monotonic() + 30
    while True:
        mine = [e for e in _log_entries(log_path) if e.get("request_id") == request_id]
        loggers = {e["logger"] for e in mine}
        if "bentoml.access" in loggers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    text = log_path.read_text(errors="replace")
    assert "bentoml.access" in loggers, mine  # BentoML's own lines are JSON too
    assert any(study_id in e["message"] for e in mine if e["logger"] == "cerebrascan.pipeline")
    for entry in mine:
        assert {"time", "level", "logger", "message", "request_id"} <= entry.keys()
    for secret in (PATIENT_NAME, "Johnathan", "JOHNATHAN", FILE_PREFIX):
        assert secret not in text
    assert secured_server.reader_key not in text


@pytest.mark.e2e
@pytest.mark.slow
def test_request_id_is_made_when_absent_or_unsafe(secured_server) -> None:
    plain = httpx.get(f"{secured_server.url}/livez")
    assert len(plain.headers["x-request-id"]) == 32
    injected = httpx.get(
        f"{secured_server.url}/livez", headers={"X-Request-ID": 'x" , "level": "ERROR'}
    )
    assert injected.headers["x-request-id"] != 'x" , "level": "ERROR'
    assert len(injected.headers["x-request-id"]) == 32


def test_request_id_header_parsing() -> None:
    assert request_id_from([(b"x-request-id", b"abc-123")]) == "abc-123"
    made = request_id_from([(b"x-request-id", b"has space")])
    assert made != "has space" and len(made) == 32
    assert request_id_from([]) != request_id_from([])


def test_formatter_writes_one_json_object_with_exception() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "cerebrascan.x", logging.ERROR, __file__, 1, "failed %s", ("once",), None
        )
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed once"
    assert entry["level"] == "ERROR" and entry["request_id"] is None
    assert "RuntimeError: boom" in entry["exception"]


def test_only_the_server_handler_switches_to_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from cerebrascan.serving.logs import BENTOML_SERVER_HANDLER, configure_logging
    from cerebrascan.serving.settings import LogSettings

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    logger = logging.getLogger("cerebrascan.test_json_logs")
    server, other = logging.StreamHandler(), logging.StreamHandler()
    server.set_name(BENTOML_SERVER_HANDLER)
    logger.addHandler(server)
    logger.addHandler(other)
    try:
        configure_logging(LogSettings(format="text"))
        assert not isinstance(server.formatter, JsonFormatter)
        configure_logging(LogSettings(format="json"))
        assert isinstance(server.formatter, JsonFormatter)
        assert not isinstance(other.formatter, JsonFormatter)
    finally:
        logger.removeHandler(server)
        logger.removeHandler(other)
