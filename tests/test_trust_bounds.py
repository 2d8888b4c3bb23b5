"""Bounded work and deletion (issue 18, item 4): crafted NIfTI headers, the job queue cap, the
cap on hung analyzer threads, and ``DELETE /studies/{id}`` / ``DELETE /patients/{id}``.

The job cap is checked on the middleware over a real BentoML task store (SQLite, BentoML's own
schema) with rows in each state; the service's task routes need ``bentoml serve``, and no new
server tier is started for this. Deletion goes through the session's ASGI app and store.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from _bentoml_impl.tasks.result import Sqlite3Store

from cerebrascan.errors import InputError
from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.inputs.nifti import MAX_VOX_OFFSET, decode_nifti
from cerebrascan.serving.http.auth import route_need
from cerebrascan.serving.jobs import JobQueueLimitMiddleware, unfinished_jobs
from cerebrascan.settings import Settings
from cerebrascan.store.artefacts import StudyArtefacts
from cerebrascan.store.deletion import pseudonym
from cerebrascan.store.records import StudyRepository
from tests import nifti_faults as faults
from tests.test_plugin_host import Number, analyzer, make_host, run

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


# --- NIfTI headers --------------------------------------------------------------------------


def _with_header(**fields: Any) -> bytes:
    """A valid small volume whose header fields are then overwritten (raw bytes, gzip)."""
    raw = bytearray(nib.Nifti1Image(faults.brain_like(), np.eye(4)).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    for name, value in fields.items():
        header[name] = value
    raw[:348] = header.binaryblock
    return gzip.compress(bytes(raw), compresslevel=1)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"vox_offset": 2.0**40}, "vox_offset"),
        ({"vox_offset": 0}, "vox_offset"),
        ({"vox_offset": MAX_VOX_OFFSET + 16}, "vox_offset"),
        ({"vox_offset": 352.5}, "vox_offset"),
        ({"bitpix": 256}, "bitpix"),  # 32 bytes a voxel claimed, whatever the datatype
    ],
    ids=["offset-1TiB", "offset-zero", "offset-over-cap", "offset-fraction", "bitpix"],
)
def test_crafted_headers_are_refused_naming_the_field(
    tmp_path: Path, fields: dict[str, Any], named: str
) -> None:
    path = tmp_path / "t1c.nii.gz"
    path.write_bytes(_with_header(**fields))
    with pytest.raises(InputError, match=named) as refused:
        decode_nifti(path, field="t1c", max_voxels=10**8)
    assert refused.value.status_code == 400
    assert str(refused.value).startswith("t1c: header field")


def test_an_ordinary_header_still_decodes(tmp_path: Path) -> None:
    path = tmp_path / "t1c.nii.gz"
    path.write_bytes(_with_header())
    assert decode_nifti(path, field="t1c", max_voxels=10**8).data.shape == (40, 48, 36)


def test_a_crafted_upload_is_a_400_over_http(asgi_client, phantom_case: Path) -> None:
    files = {
        m: (f"{m}.nii.gz", modality_path(phantom_case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }
    files["t2w"] = ("t2w.nii.gz", _with_header(vox_offset=2.0**40), "application/gzip")
    response = asgi_client.post("/analyze", files=files)
    assert response.status_code == 400, response.text
    assert "t2w: header field vox_offset" in response.text


# --- the job queue ----------------------------------------------------------------------------


def _store_with(path: Path, statuses: list[str]) -> None:
    Sqlite3Store.init_db(str(path))
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO result (task_id, name, input, status) VALUES (?, ?, ?, ?)",
            [(uuid.uuid4().hex, "analyze", b"", status) for status in statuses],
        )


def _post(middleware: JobQueueLimitMiddleware, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_jobs_beyond_the_cap_are_refused_with_429(tmp_path: Path) -> None:
    store = tmp_path / "task_result.db"
    assert unfinished_jobs(str(store)) == 0  # not created yet
    _store_with(store, ["in_progress", "pending", "completed", "failed", "canceled"])
    assert unfinished_jobs(str(store)) == 2

    async def accept(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"queued"})

    roomy = JobQueueLimitMiddleware(accept, max_queued=3, store_file=lambda: str(store))
    assert _post(roomy, "/analyze/submit") == (200, b"queued")
    full = JobQueueLimitMiddleware(accept, max_queued=2, store_file=lambda: str(store))
    status, body = _post(full, "/analyze/submit")
    assert status == 429
    assert "jobs.max_queued=2" in json.loads(body)["error"]
    assert _post(full, "/analyze/retry")[0] == 429
    assert _post(full, "/analyze")[0] == 200  # synchronous analyses are not jobs


# --- hung analyzer threads --------------------------------------------------------------------


def test_a_plugin_with_too_many_hung_threads_is_skipped_until_they_end() -> None:
    release = threading.Event()
    try:
        host = make_host(
            analyzer("hangs", lambda c: Number(value=float(release.wait(60))), timeout_s=0.05),
            analyzer("quick"),
        )
        for _ in range(2):  # each study leaves one more thread behind
            assert run(host)["hangs"].error == "timed out after 0.05 s"
        skipped = run(host)
        assert skipped["hangs"].status == "skipped"
        assert "2 timed-out analyzer thread(s) still running" in (skipped["hangs"].error or "")
        assert skipped["quick"].status == "skipped"  # the whole plugin
        release.set()
        deadline = time.monotonic() + 30
        while host._runner.abandoned_threads("tests") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run(host)["hangs"].status == "ok"
    finally:
        release.set()


# --- deletion ---------------------------------------------------------------------------------


def test_deletion_routes_need_the_admin_role() -> None:
    assert route_need("/studies/" + "a" * 32, "DELETE") == "admin"
    assert route_need("/patients/PT-1", "DELETE") == "admin"
    assert route_need("/studies/" + "a" * 32, "GET") == "reader"


def _stored(settings: Settings, patient_id: str, n: int) -> list[str]:
    """``n`` studies of ``patient_id`` in the session's store, each with a folder of files."""
    repository = StudyRepository.from_settings(settings)
    artefacts = StudyArtefacts(settings.studies_dir)
    ids = []
    for _ in range(n):
        study_id = uuid.uuid4().hex
        repository.save_study(
            study_id, findings={}, model_name="m", model_version="1", patient_id=patient_id
        )
        artefacts.save(study_id, np.ones((4, 4, 4), np.uint8), np.eye(4), "{}")
        artefacts.save_artefact(study_id, "probe", np.ones((4, 4, 4), np.uint8), np.eye(4))
        (artefacts.views_cache(study_id) / "mesh.glb").write_bytes(b"glb")
        ids.append(study_id)
    repository.close()
    return ids


def _patient_studies(settings: Settings, patient: str) -> list[str] | None:
    """The patient's stored study ids, or None if the patient is not stored."""
    repository = StudyRepository.from_settings(settings)
    try:
        if not repository.has_patient(patient):
            return None
        return [record.study_id for record in repository.studies_for_patient(patient)]
    finally:
        repository.close()


def test_delete_a_patient_removes_records_and_files(
    asgi_client, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings()
    patient = f"PT-{uuid.uuid4().hex[:8]}-9"
    ids = _stored(settings, patient, 2)
    assert all(asgi_client.get(f"/studies/{i}").status_code == 200 for i in ids)
    with caplog.at_level(logging.INFO, logger="cerebrascan.store.deletion"):
        response = asgi_client.delete(f"/patients/{patient}")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted_studies": 2}
    for study_id in ids:
        assert not (settings.studies_dir / study_id).exists()
        assert asgi_client.get(f"/studies/{study_id}").status_code == 404
    assert _patient_studies(settings, patient) is None
    assert asgi_client.delete(f"/patients/{patient}").status_code == 404
    logged = caplog.text
    assert pseudonym(patient) in logged
    assert patient not in logged and not any(study_id in logged for study_id in ids)
    # a name-like id is refused without being repeated
    refused = asgi_client.delete("/patients/DOE%5EJOHN")
    assert refused.status_code in (404, 422) and "DOE" not in refused.text


def test_delete_a_study_removes_its_record_and_files(asgi_client) -> None:
    settings = Settings()
    patient = f"PT-{uuid.uuid4().hex[:8]}-7"
    first, second = _stored(settings, patient, 2)
    assert asgi_client.get(f"/studies/{first}/artefacts/probe").status_code == 200
    response = asgi_client.delete(f"/studies/{first}")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted_studies": 1}
    assert not (settings.studies_dir / first).exists()
    assert asgi_client.get(f"/studies/{first}/artefacts/probe").status_code == 404
    assert _patient_studies(settings, patient) == [second]
    assert asgi_client.delete(f"/studies/{first}").status_code == 404
    assert asgi_client.delete("/studies/not-an-id").status_code == 400
    # the patient's last study takes the patient with it
    assert asgi_client.delete(f"/studies/{second}").status_code == 200
    assert _patient_studies(settings, patient) is None


def test_studies_past_their_retention_are_deleted(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from cerebrascan.serving.retention import RetentionSweeper
    from cerebrascan.serving.settings import RetentionSettings
    from cerebrascan.store.deletion import StudyDeletion

    repository = StudyRepository(f"sqlite:///{tmp_path / 'store.db'}")
    artefacts = StudyArtefacts(tmp_path / "studies")
    now = datetime(2026, 6, 1, tzinfo=UTC)
    ages = {"old": 40, "recent": 5}
    ids = {}
    for name, days in ages.items():
        study_id = uuid.uuid4().hex
        repository.save_study(
            study_id,
            findings={},
            model_name="m",
            model_version="1",
            patient_id="PT-0042",
            created_at=now - timedelta(days=days),
        )
        artefacts.save(study_id, np.ones((4, 4, 4), np.uint8), np.eye(4), "{}")
        ids[name] = study_id
    deletion = StudyDeletion(lambda: repository, artefacts)
    assert RetentionSweeper(RetentionSettings(), deletion).run_once(now) == 0  # kept forever
    sweeper = RetentionSweeper(RetentionSettings(study_days=30), deletion)
    assert sweeper.run_once(now) == 1
    assert repository.get_study(ids["old"]) is None
    assert not (artefacts.root / ids["old"]).exists()
    assert repository.get_study(ids["recent"]) is not None
    assert (artefacts.root / ids["recent"]).is_dir()
    assert sweeper.run_once(now) == 0
    # the background thread starts only with a retention, and stops when asked
    assert not RetentionSweeper(RetentionSettings(), deletion).start()
    assert sweeper.start()
    sweeper.stop()
    assert sweeper._thread is not None and not sweeper._thread.is_alive()
    repository.close()
