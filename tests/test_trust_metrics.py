"""Nothing identifying in ``/metrics`` or the server's log (issue 18, item 1).

A study with a patient id goes to the real server of ``tests/secured_server.py``; then its
timeline, result, report, segmentation and views are read with the real ids, and a random path
is asked for. Neither ``/metrics`` nor the log lines written during those reads may hold the
study id, the patient id or the random path; the request metrics carry the route templates.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from cerebrascan.serving.http.route_labels import UNMATCHED, route_template
from tests.secured_server import case_files

PATIENT_ID = "PT-20991-TRUST"


async def _endpoint(request: object) -> None:  # pragma: no cover - never called
    return None


def test_route_templates_replace_ids_and_unknown_paths() -> None:
    studies = Starlette(
        routes=[
            Route("/{study_id}", _endpoint),
            Route("/{study_id}/views/volume/{name}.nii.gz", _endpoint),
        ]
    )
    app = Starlette(
        routes=[
            Route("/analyze", _endpoint),
            Mount("/studies", studies),
            Mount("/patients", Starlette(routes=[Route("/{patient_id}/timeline", _endpoint)])),
        ]
    )
    assert route_template("/analyze", app.routes) == "/analyze"
    assert route_template("/studies/ab12", app.routes) == "/studies/{study_id}"
    assert (
        route_template("/studies/ab12/views/volume/t1c.nii.gz", app.routes)
        == "/studies/{study_id}/views/volume/{name}.nii.gz"
    )
    assert route_template(f"/patients/{PATIENT_ID}/timeline", app.routes) == (
        "/patients/{patient_id}/timeline"
    )
    assert route_template("/wp-admin/DOE^JOHN", app.routes) == UNMATCHED


@pytest.mark.e2e
@pytest.mark.slow
def test_ids_in_paths_reach_neither_metrics_nor_logs(secured_server, phantom_case: Path) -> None:
    url = secured_server.url
    reader = secured_server.reader()
    analysed = httpx.post(
        f"{url}/analyze",
        files=case_files(phantom_case),
        data={"options": json.dumps({"patient_id": PATIENT_ID})},
        headers=reader,
        timeout=600,
    )
    assert analysed.status_code == 200, analysed.text
    study_id = analysed.json()["study_id"]
    log_path = secured_server.server.log_path
    log_before = len(log_path.read_bytes())

    random_path = f"/probe-{uuid.uuid4().hex}"
    reads = [
        (f"/patients/{PATIENT_ID}/timeline", reader, 200),
        (f"/studies/{study_id}", reader, 200),
        (f"/studies/{study_id}/segmentation", reader, 200),
        (f"/studies/{study_id}/report?format=md", reader, 200),
        (f"/studies/{study_id}/views/index.json", reader, 200),
        (random_path, secured_server.admin(), 404),
    ]
    for path, headers, expected in reads:
        response = httpx.get(f"{url}{path}", headers=headers, timeout=120)
        assert response.status_code == expected, (path, response.text[:300])

    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401  # a key by default
    metrics = httpx.get(f"{url}/metrics", headers=reader, timeout=30)
    assert metrics.status_code == 200
    endpoints = set(re.findall(r'endpoint="([^"]*)"', metrics.text))
    # the reads above are counted, under their templates
    assert {
        "/patients/{patient_id}/timeline",
        "/studies/{study_id}",
        "/studies/{study_id}/report",
        UNMATCHED,
    } <= endpoints, sorted(endpoints)
    # BentoML writes an access line once its response has gone out: wait for the last read's
    deadline = time.monotonic() + 30
    while True:
        log_of_reads = log_path.read_bytes()[log_before:].decode(errors="replace")
        if f"path={UNMATCHED}" in log_of_reads or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f"path={UNMATCHED}" in log_of_reads, log_of_reads[-2000:]
    assert "path=/studies/{study_id}/report" in log_of_reads  # logged under its template
    for secret in (study_id, PATIENT_ID, random_path):
        assert secret not in metrics.text
        assert secret not in log_of_reads
    assert PATIENT_ID not in log_path.read_text(errors="replace")
