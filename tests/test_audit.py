"""The audit trail (issue 18, item 4): every patient-linked read and write leaves one record
(key name, tenant, action, route template, study id, patient pseudonym, time, status) in the
study store, ``GET /audit`` (admin) shows a tenant its own records, and no raw patient id or
name is ever written to it."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from starlette.testclient import TestClient

from cerebrascan.serving.audit import audited_action
from cerebrascan.settings import Settings
from cerebrascan.store import StudyRepository
from cerebrascan.store.artefacts import RESULT_FILE
from cerebrascan.store.audit import AuditTrail, patient_pseudonym
from tests.tenant_keys import (
    A_ADMIN,
    A_READER,
    B_ADMIN,
    B_READER,
    ENTRIES,
    TENANT_A,
    TENANT_B,
    key,
    tenant_client,
)

RAW_PATIENT = "AUDIT-PAT-4711"
NAME = "Jane Auditson"


@pytest.fixture(scope="module")
def client(asgi_client: Any) -> TestClient:
    return tenant_client(asgi_client)


@pytest.fixture(scope="module")
def a_study(reported_study: dict[str, Any]) -> str:
    """The session's analysed study stored again as tenant A's, of patient ``RAW_PATIENT``."""
    study_id = uuid.uuid4().hex
    studies_dir = Settings().studies_dir
    shutil.copytree(studies_dir / reported_study["study_id"], studies_dir / study_id)
    answer = {**reported_study, "study_id": study_id}
    (studies_dir / study_id / RESULT_FILE).write_text(json.dumps(answer))
    repository = StudyRepository.from_settings(Settings())
    try:
        repository.save_study(
            study_id,
            findings=answer,
            model_name=answer["model"]["name"],
            model_version=answer["model"]["version"],
            patient_id=RAW_PATIENT,
            study_date=date(2025, 2, 3),
            tenant=TENANT_A,
        )
        stored_key = repository.patient_key(RAW_PATIENT)
    finally:
        repository.close()
    return study_id + ":" + stored_key


def _all_rows() -> list[tuple[Any, ...]]:
    repository = StudyRepository.from_settings(Settings())
    try:
        with repository.engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql("SELECT * FROM audit_events")]
    finally:
        repository.close()


def test_patient_linked_requests_leave_records_and_audit_shows_the_own_tenants(
    client: TestClient, a_study: str
) -> None:
    study_id, stored_key = a_study.split(":")
    since = datetime.now(UTC).isoformat()  # this test's requests only
    reads = [
        f"/studies/{study_id}",
        f"/studies/{study_id}/report?format=md",
        f"/studies/{study_id}/segmentation",
        f"/studies/{study_id}/views/index.json",
        f"/patients/{RAW_PATIENT}/timeline",
    ]
    for path in reads:
        assert client.get(path, headers=key(A_READER)).status_code == 200, path
    assert client.get(f"/studies/{study_id}", headers=key(B_READER)).status_code == 404
    assert client.get("/palette", headers=key(A_READER)).status_code == 200  # not audited
    refused = client.get(f"/patients/{NAME}/timeline", headers=key(A_READER))
    assert refused.status_code == 422
    assert client.delete(f"/studies/{study_id}", headers=key(A_ADMIN)).status_code == 200

    page = client.get("/audit", params={"since": since}, headers=key(A_ADMIN))
    assert page.status_code == 200, page.text
    events = page.json()["events"]
    actions = [(e["action"], e["route"], e["status"]) for e in events]
    assert actions == [
        ("study.read", "GET /studies/{study_id}", 200),
        ("report.read", "GET /studies/{study_id}/report", 200),
        ("segmentation.read", "GET /studies/{study_id}/segmentation", 200),
        ("view.read", "GET /studies/{study_id}/views/index.json", 200),
        ("timeline.read", "GET /patients/{patient_id}/timeline", 200),
        ("timeline.read", "GET /patients/{patient_id}/timeline", 422),
        ("study.delete", "DELETE /studies/{study_id}", 200),
    ]
    pseudonym = patient_pseudonym(stored_key)
    assert pseudonym is not None and RAW_PATIENT not in pseudonym
    for event in events:
        assert event["tenant"] == TENANT_A
        assert event["key_name"] in ("a-reader", "a-admin")
        assert event["patient"] in (pseudonym, None)
    assert [e["study_id"] for e in events if e["action"] != "timeline.read"] == [study_id] * 5
    assert events[4]["patient"] == pseudonym and events[5]["patient"] is None
    assert events[-1]["key_name"] == "a-admin"

    # tenant B's admin sees B's own probe of A's study, and nothing of A's
    theirs = client.get("/audit", params={"since": since}, headers=key(B_ADMIN)).json()["events"]
    assert [(e["action"], e["study_id"], e["status"]) for e in theirs] == [
        ("study.read", study_id, 404)
    ]
    assert client.get("/audit", headers=key(A_READER)).status_code == 403


def test_no_raw_patient_id_or_name_is_ever_stored(client: TestClient, a_study: str) -> None:
    client.get(f"/patients/{RAW_PATIENT}/timeline", headers=key(B_READER))
    client.get(f"/patients/{NAME}/timeline", headers=key(B_READER))
    rows = _all_rows()
    assert rows, "no audit record at all"
    dumped = json.dumps(rows, default=str)
    assert RAW_PATIENT not in dumped
    for word in NAME.split():
        assert word not in dumped


def test_audit_route_checks_its_parameters(client: TestClient) -> None:
    bad = client.get("/audit?since=yesterday", headers=key(A_ADMIN))
    assert bad.status_code == 400 and "since 'yesterday'" in bad.json()["error"]
    limit = client.get("/audit?limit=0", headers=key(A_ADMIN))
    assert limit.status_code == 400 and "limit '0'" in limit.json()["error"]
    paged = client.get("/audit?since=2000-01-01T00:00:00&limit=1", headers=key(A_ADMIN)).json()
    assert len(paged["events"]) == 1 and paged["next_since"] == paged["events"][0]["at"]


def test_every_patient_linked_route_is_audited() -> None:
    assert audited_action("POST", "/analyze") == "analyze"
    assert audited_action("POST", "/analyze/dicom/submit") == "analyze"
    assert audited_action("GET", "/analyze/get") == "job.read"
    assert audited_action("GET", f"/studies/{'a' * 32}/dicom/seg") == "dicom.read"
    assert audited_action("POST", f"/studies/{'a' * 32}/dicom/send") == "dicom.send"
    assert audited_action("DELETE", "/patients/P-1") == "patient.delete"
    assert audited_action("GET", f"/studies/{'a' * 32}/views/slice.png") == "view.read"
    assert audited_action("GET", "/palette") is None
    assert audited_action("GET", "/plugins") is None


def test_a_grpc_analysis_is_audited_with_its_callers_tenant(
    registered_default_model: str, tmp_path: Path
) -> None:
    """A refused ModelInfer (no input tensor) by tenant B's key leaves B's record with the
    gRPC code; the caller reaches the pipeline the same way for an analysis."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model
    from cerebrascan.serving.grpc.server import start_oip_server
    from cerebrascan.testing.server_process import free_port

    settings = Settings(
        grpc={"port": free_port()},
        auth={"enabled": True, "api_keys": [e.model_dump() for e in ENTRIES]},
    )
    pipeline = AnalysisPipeline(settings, resolve_model(settings))
    server = start_oip_server(settings, lambda: pipeline)
    assert server is not None
    since = datetime.now(UTC)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{settings.grpc.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(
                    service_pb2.ModelInferRequest(model_name=settings.grpc.model_name),
                    metadata=(("x-api-key", B_READER),),
                    timeout=30,
                )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(None)
    trail = AuditTrail(pipeline.records.engine)
    (event,) = [e for e in trail.since(TENANT_B, since) if e.route == "gRPC ModelInfer"]
    assert (event.action, event.route, event.key_name) == ("analyze", "gRPC ModelInfer", "b-reader")
    assert event.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not [e for e in trail.since(TENANT_A, since) if e.route == "gRPC ModelInfer"]
