"""Tenants kept apart (issue 18, item 4): another tenant's study, report, artefacts, views,
DICOM outputs, render and analysis jobs and patients answer exactly as unknown ids do; a
patient id names a patient of one tenant only (tenant B's "P1" does not join tenant A's
timeline or baseline); reserved artefact names are refused; with a patient-id key every id is
stored as its keyed hash."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.serving.settings import ApiKeyEntry
from cerebrascan.serving.tenants import TaskTenantGuard
from cerebrascan.settings import Settings
from cerebrascan.store import StudyRepository, create_store_engine, migrations
from cerebrascan.store.artefacts import RESULT_FILE
from cerebrascan.store.audit import AuditTrail, patient_pseudonym
from cerebrascan.store.models import DEFAULT_TENANT
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

PATIENT = "P1-TENANT-0001"
UNKNOWN = "0" * 32
FIRST, LATER = date(2025, 1, 6), date(2025, 3, 10)


def _files(case: Path) -> dict[str, tuple[str, bytes, str]]:
    return {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }


@pytest.fixture(scope="module")
def client(asgi_client: Any) -> TestClient:
    return tenant_client(asgi_client)


@pytest.fixture(scope="module")
def studies(
    client: TestClient, phantom_case: Path, reported_study: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Tenant A's and tenant B's study of a patient both call "P1", B's dated later (without
    tenants, B's would join A's timeline and take A's as its baseline).

    A's is the session's analysed study (``reported_study``) stored again as tenant A's, with
    the patient and date: only B's is analysed here."""
    a_id = uuid.uuid4().hex
    studies_dir = Settings().studies_dir
    shutil.copytree(studies_dir / reported_study["study_id"], studies_dir / a_id)
    a_answer = {
        **reported_study,
        "study_id": a_id,
        "segmentation_url": f"/studies/{a_id}/segmentation",
    }
    (studies_dir / a_id / RESULT_FILE).write_text(json.dumps(a_answer))
    repository = StudyRepository.from_settings(Settings())
    try:
        repository.save_study(
            a_id,
            findings=a_answer,
            model_name=a_answer["model"]["name"],
            model_version=a_answer["model"]["version"],
            patient_id=PATIENT,
            study_date=FIRST,
            tenant=TENANT_A,
        )
    finally:
        repository.close()
    options = {"patient_id": PATIENT, "study_date": LATER.isoformat(), "mirror_tta": False}
    response = client.post(
        "/analyze",
        files=_files(phantom_case),
        data={"options": json.dumps(options)},
        headers=key(B_READER),
    )
    assert response.status_code == 200, response.text
    return {TENANT_A: a_answer, TENANT_B: response.json()}


STUDY_PATHS = (
    "",
    "/segmentation",
    "/artefacts/change_map",
    "/report",
    "/report?format=md",
    "/report/overlay.png",
    "/views/index.json",
    "/views/slice.png",
    "/views/montage.png?count=2",
    "/views/volume/labels.nii.gz",
    "/views/jobs/" + "f" * 32,
    "/dicom/seg",
    "/dicom/sr",
)


@pytest.mark.parametrize("suffix", STUDY_PATHS)
def test_another_tenants_study_answers_as_an_unknown_id(
    client: TestClient, studies: dict[str, dict[str, Any]], suffix: str
) -> None:
    theirs = studies[TENANT_A]["study_id"]
    own = client.get(f"/studies/{theirs}{suffix}", headers=key(A_READER))
    foreign = client.get(f"/studies/{theirs}{suffix}", headers=key(B_READER))
    unknown = client.get(f"/studies/{UNKNOWN}{suffix}", headers=key(B_READER))
    assert foreign.status_code == unknown.status_code == 404, foreign.text
    # the very answer an unknown id gets, but for the id itself: no existence oracle
    assert foreign.text.replace(theirs, UNKNOWN) == unknown.text
    assert foreign.headers["content-type"] == unknown.headers["content-type"]
    if suffix.startswith(("/views/jobs", "/artefacts", "/dicom")):
        assert own.status_code in (404, 409), own.text  # no such job / artefact / DICOM source
    else:
        assert own.status_code == 200, own.text


def test_another_tenants_render_job_cannot_be_started_or_deleted(
    client: TestClient, studies: dict[str, dict[str, Any]]
) -> None:
    theirs = studies[TENANT_A]["study_id"]
    job = client.post(
        f"/studies/{theirs}/views/jobs",
        json={"view": "mesh", "format": "stl"},
        headers=key(B_READER),
    )
    assert job.status_code == 404, job.text
    deleted = client.delete(f"/studies/{theirs}", headers=key(B_ADMIN))
    assert deleted.status_code == 404, deleted.text
    assert client.get(f"/studies/{theirs}", headers=key(A_READER)).status_code == 200


def test_a_patient_id_names_a_patient_of_one_tenant(
    client: TestClient, studies: dict[str, dict[str, Any]]
) -> None:
    a_study, b_study = studies[TENANT_A]["study_id"], studies[TENANT_B]["study_id"]
    assert a_study != b_study
    # B's later study of "P1" found no prior: A's study is not B's patient's baseline
    delta = studies[TENANT_B]["analyzers"]["delta"]
    assert delta["status"] == "ok", delta
    assert delta["result"]["computed"] is False
    assert "no study dated before" in delta["result"]["reason"]
    timelines = {
        tenant: client.get(f"/patients/{PATIENT}/timeline", headers=key(reader))
        for tenant, reader in ((TENANT_A, A_READER), (TENANT_B, B_READER))
    }
    visits = {t: [v["study_id"] for v in r.json()["visits"]] for t, r in timelines.items()}
    assert visits == {TENANT_A: [a_study], TENANT_B: [b_study]}
    # the analysis left tenant B's audit record: its study and the patient's pseudonym
    repository = StudyRepository.from_settings(Settings())
    try:
        events = AuditTrail(repository.engine).since(TENANT_B, datetime(2000, 1, 1, tzinfo=UTC))
        stored_key = repository.patient_key(PATIENT)
    finally:
        repository.close()
    # other modules' tenant-B requests share the session's store: this study's record only
    (analysis,) = [e for e in events if e.action == "analyze" and e.study_id == b_study]
    assert (analysis.study_id, analysis.key_name, analysis.status) == (b_study, "b-reader", 200)
    assert analysis.patient == patient_pseudonym(stored_key) and PATIENT not in str(analysis)


def test_reserved_artefact_names_are_refused(
    client: TestClient, studies: dict[str, dict[str, Any]]
) -> None:
    own = studies[TENANT_A]["study_id"]
    for name in ("registration_reference", "display_t1c", "segmentation"):
        response = client.get(f"/studies/{own}/artefacts/{name}", headers=key(A_READER))
        assert response.status_code == 403, response.text
        assert f"'{name}' is reserved" in response.json()["error"]


def test_deleting_a_patient_deletes_only_the_own_tenants(
    client: TestClient, studies: dict[str, dict[str, Any]]
) -> None:
    deleted = client.delete(f"/patients/{PATIENT}", headers=key(B_ADMIN))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"deleted_studies": 1}
    b_gone = client.get(f"/studies/{studies[TENANT_B]['study_id']}", headers=key(B_READER))
    assert b_gone.status_code == 404
    a_timeline = client.get(f"/patients/{PATIENT}/timeline", headers=key(A_READER))
    assert [v["study_id"] for v in a_timeline.json()["visits"]] == [studies[TENANT_A]["study_id"]]
    assert client.delete(f"/patients/{PATIENT}", headers=key(B_ADMIN)).status_code == 404
    assert client.delete(f"/patients/{PATIENT}", headers=key(A_ADMIN)).status_code == 200


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def _task_routes() -> Callable[[Scope, Any, Any], Awaitable[None]]:
    """A stand-in for BentoML's task routes (the in-process app has no task store; the real
    routes are exercised by tests/test_async_jobs.py): submit answers a new task id, the
    other routes know every id it gave out."""
    issued: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path.endswith("/submit"):
            issued.append(f"{len(issued):032x}")
            body = json.dumps({"task_id": issued[-1], "status": "in_progress"}).encode()
            status = 200
        else:
            task_id = scope["query_string"].decode().partition("task_id=")[2]
            status = 200 if task_id in issued else 404
            body = json.dumps(
                {"status": "completed"} if status == 200 else {"error": "task_id not found"}
            ).encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def test_another_tenants_job_answers_as_an_unknown_task() -> None:
    from cerebrascan.serving.http.auth import ApiKeyMiddleware
    from cerebrascan.serving.settings import AuthSettings

    app = ApiKeyMiddleware(
        TaskTenantGuard(_task_routes()),  # type: ignore[arg-type]
        AuthSettings(enabled=True, api_keys=ENTRIES),
    )
    client = TestClient(app)
    task_id = client.post("/analyze/submit", headers=key(A_READER)).json()["task_id"]
    for route in ("status", "get"):
        own = client.get(f"/analyze/{route}?task_id={task_id}", headers=key(A_READER))
        assert own.status_code == 200
        foreign = client.get(f"/analyze/{route}?task_id={task_id}", headers=key(B_READER))
        unknown = client.get(f"/analyze/{route}?task_id={'9' * 32}", headers=key(B_READER))
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json() == unknown.json() == {"error": "task_id not found"}
    retried = client.post(f"/analyze/retry?task_id={task_id}", headers=key(B_READER))
    assert retried.status_code == 404


def test_key_entries_carry_a_tenant() -> None:
    assert DEFAULT_TENANT == "default"
    entry = ApiKeyEntry(name="old", role="reader", sha256="a" * 64)
    assert entry.tenant == DEFAULT_TENANT  # configs written before tenants keep working
    with pytest.raises(ValueError, match="tenant"):
        ApiKeyEntry(name="x", role="reader", sha256="a" * 64, tenant="Site A")


def test_with_a_patient_id_key_every_id_is_stored_as_its_hash(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    plain = StudyRepository(url)
    plain.save_study("1" * 32, findings={}, model_name="m", model_version="1", patient_id="PAT-7")
    plain.close()
    keyed = StudyRepository(url, patient_id_key=b"k" * 24)  # hashes the stored "PAT-7"
    keyed.save_study(
        "2" * 32, findings={}, model_name="m", model_version="1", patient_id="PAT-7", tenant="x"
    )
    with keyed.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT tenant, id FROM patients ORDER BY tenant").all()
        study_keys = conn.exec_driver_sql("SELECT patient_id FROM studies").scalars().all()
    assert [tenant for tenant, _ in stored] == [DEFAULT_TENANT, "x"]
    assert all(key_.startswith("hmac-") and len(key_) == 69 for _, key_ in stored)
    assert all(k.startswith("hmac-") for k in study_keys) and "PAT-7" not in str(stored)
    assert [r.study_id for r in keyed.studies_for_patient("PAT-7")] == ["1" * 32]
    assert [r.study_id for r in keyed.studies_for_patient("PAT-7", tenant="x")] == ["2" * 32]
    keyed.close()


def test_the_migration_gives_old_rows_the_default_tenant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = create_store_engine(url)
    migrations.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO patients (id, created_at) VALUES ('PAT-OLD-9', '2020-01-01 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO studies (id, patient_id, study_date, created_at, model_name, "
            "model_version, analyzer_versions, findings, artefacts) VALUES "
            f"('{'7' * 32}', 'PAT-OLD-9', '2020-02-02', '2020-01-01 00:00:00', 'm', '1', "
            "'{}', '{}', '{}')"
        )
    engine.dispose()
    repository = StudyRepository(url)
    assert repository.study_owner("7" * 32) == (DEFAULT_TENANT, "PAT-OLD-9")
    assert repository.studies_for_patient("PAT-OLD-9", tenant="other") == []
    assert len(repository.studies_for_patient("PAT-OLD-9")) == 1
    repository.close()
    assert Settings().store_database_url  # the settings still build a store URL
