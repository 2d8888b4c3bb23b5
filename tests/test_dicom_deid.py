"""De-identification of DICOM studies (issue 16 item 7), no patient data in logs or metrics, and
the job route ``/analyze/dicom/submit``, through the session's ASGI app.

The phantom study (tests/conftest.py ``dicom_phantom``) carries recognisable identifying
attributes (``cerebrascan.testing.dicom_phantoms.PATIENT``). The server's secret for the keyed
UIDs is ``patient_id_key``; the session server has none, so the de-identified analysis
(tests/conftest.py ``deidentified_atlas_study``, shared with tests/test_dicom_atlas.py) sets that
setting on the running service for the duration of its request (a setting value, not a test
double: the real route, builder and profile run). The job route runs on a real server.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import highdicom as hd
import httpx
import pydicom
import pytest
from pydantic import SecretStr
from pydicom.uid import UID

from cerebrascan.inputs.dicom.deid import Deidentifier, deidentifier_for
from cerebrascan.testing.dicom_phantoms import PATIENT
from tests.conftest import DEIDENTIFICATION_KEY
from tests.secured_server import wait_for_result

KEY = DEIDENTIFICATION_KEY
DEIDENTIFIED = json.dumps({"skull_stripped": True, "deidentify": True})
PHI_VALUES = tuple(PATIENT.values())


def _archive(phantom) -> tuple[str, bytes, str]:
    return ("study.zip", Path(phantom.archive).read_bytes(), "application/zip")


def _identifying(phantom) -> tuple[str, ...]:
    """Identifying values and the source UIDs that must not come back de-identified."""
    return (*PHI_VALUES, phantom.study_uid, *phantom.series_uids.values())


@pytest.fixture(scope="module")
def deidentified(deidentified_atlas_study) -> dict:
    """The de-identified analysis (also normalised to SRI24: tests/conftest.py)."""
    answer: dict = deidentified_atlas_study[0]
    return answer


@pytest.fixture(scope="module")
def deidentified_logs(deidentified_atlas_study) -> list[logging.LogRecord]:
    records: list[logging.LogRecord] = deidentified_atlas_study[1]
    return records


@pytest.fixture(scope="module")
def stored_headers(deidentified) -> list[dict]:
    from cerebrascan.settings import Settings

    folder = Settings().studies_dir / deidentified["study_id"]
    headers: list[dict] = json.loads((folder / "dicom_source.json").read_text())
    return headers


def test_answer_uids_are_keyed_hashes_of_the_sources(deidentified, dicom_phantom) -> None:
    keyed = Deidentifier(KEY.encode())  # an independent instance: what another worker derives
    section = deidentified["dicom"]
    assert section["study_uid"] == keyed.uid(dicom_phantom.study_uid)
    assert section["reference_series_uid"] == keyed.uid(dicom_phantom.series_uids["t1c"])
    assert {r: v["series_uid"] for r, v in section["roles"].items()} == {
        r: keyed.uid(uid) for r, uid in dicom_phantom.series_uids.items()
    }
    text = json.dumps(deidentified)
    assert not [value for value in _identifying(dicom_phantom) if value in text]


def test_stored_headers_are_deidentified(stored_headers, dicom_phantom, deidentified) -> None:
    text = json.dumps(stored_headers)
    assert not [value for value in _identifying(dicom_phantom) if value in text]
    datasets = [pydicom.Dataset.from_json(header) for header in stored_headers]
    assert len(datasets) == deidentified["dicom"]["grid"]["shape"][2]
    for dataset in datasets:
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert dataset.PatientName == "" and dataset.AccessionNumber == ""
        assert dataset.PatientID.startswith("CS-")
        assert "StudyDescription" not in dataset and "SeriesDescription" not in dataset
        assert dataset.SeriesInstanceUID == deidentified["dicom"]["reference_series_uid"]
        assert UID(dataset.SOPInstanceUID).is_valid
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)  # still one per slice


def test_seg_sr_pdf_are_deidentified_and_chained(
    asgi_client, deidentified, stored_headers, dicom_phantom
) -> None:
    study_id = deidentified["study_id"]
    sources = [pydicom.Dataset.from_json(header) for header in stored_headers]
    source_instances = {str(s.SOPInstanceUID) for s in sources}
    bodies = {}
    for output in ("seg", "sr", "pdf"):
        response = asgi_client.get(f"/studies/{study_id}/dicom/{output}")
        assert response.status_code == 200, response.text
        bodies[output] = response.content
        leaked = [v for v in _identifying(dicom_phantom) if v.encode() in response.content]
        assert not leaked, (output, leaked)
        dataset = pydicom.dcmread(io.BytesIO(response.content))
        assert dataset.PatientIdentityRemoved == "YES", output
        assert dataset.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert dataset.StudyInstanceUID == deidentified["dicom"]["study_uid"]
        assert dataset.PatientID == sources[0].PatientID
    seg = hd.seg.segread(io.BytesIO(bodies["seg"]))
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == deidentified["dicom"]["reference_series_uid"]
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} <= (
        source_instances
    )
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    sr = hd.sr.srread(io.BytesIO(bodies["sr"]))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {
        seg.SOPInstanceUID
    }


def test_two_deidentifications_agree_and_another_key_differs(dicom_phantom) -> None:
    from dicomanonymizer import simpledicomanonymizer

    files = sorted(dicom_phantom.series_folders["t1c"].iterdir())[:3]
    originals = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    first = [Deidentifier(KEY.encode()).dataset(d.copy()).to_json_dict() for d in originals]
    second = [Deidentifier(KEY.encode()).dataset(d.copy()).to_json_dict() for d in originals]
    assert first == second
    other = Deidentifier(b"another-secret-key-of-32-bytes!!").dataset(originals[0].copy())
    assert other.SeriesInstanceUID != first[0]["0020000E"]["Value"][0]
    assert other.SeriesInstanceUID != originals[0].SeriesInstanceUID
    # the library's random UID table was never used (it would differ between workers)
    assert simpledicomanonymizer.dictionary == {}
    rooted = Deidentifier(KEY.encode(), uid_root="1.2.826.0.1.3680043.10.999")
    uid = rooted.uid(originals[0].SOPInstanceUID)
    assert uid.startswith("1.2.826.0.1.3680043.10.999.") and UID(uid).is_valid


def test_server_setting_cannot_be_turned_off_and_needs_a_key(asgi_client, dicom_phantom) -> None:
    import service

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service.SETTINGS.dicom, "deidentify", True)
        patch.setattr(service.SETTINGS, "patient_id_key", SecretStr(KEY))
        refused = asgi_client.post(
            "/analyze/dicom",
            files={"archive": _archive(dicom_phantom)},
            data={"options": json.dumps({"skull_stripped": True, "deidentify": False})},
        )
    assert refused.status_code == 422, refused.text
    assert "dicom.deidentify" in refused.text
    keyless = asgi_client.post(
        "/analyze/dicom",
        files={"archive": _archive(dicom_phantom)},
        data={"options": DEIDENTIFIED},
    )
    assert keyless.status_code == 422, keyless.text
    assert "patient_id_key" in keyless.text
    assert deidentifier_for(None, False, None) is None
    with pytest.raises(ValueError, match="16 at least"):
        Deidentifier(b"short")


@pytest.mark.e2e
@pytest.mark.slow
def test_job_route_matches_sync_and_leaks_no_patient_data(
    secured_server, dicom_phantom, dicom_study
) -> None:
    """``/analyze/dicom/submit`` on a real server (the in-process client runs a job's
    background task inside the submitting request), de-identification off."""
    submitted = httpx.post(
        f"{secured_server.url}/analyze/dicom/submit",
        files={"archive": _archive(dicom_phantom)},
        data={"options": json.dumps({"skull_stripped": True})},
        headers=secured_server.reader(),
        timeout=120,
    )
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    result = wait_for_result(
        secured_server.url, task_id, secured_server.reader(), route="/analyze/dicom"
    )
    assert result.status_code == 200, result.text
    answer = result.json()
    assert answer["volumes_ml"] == pytest.approx(dicom_study["volumes_ml"], abs=1e-6)
    assert answer["dicom"]["roles"] == dicom_study["dicom"]["roles"]
    metrics = httpx.get(f"{secured_server.url}/metrics", headers=secured_server.reader())
    assert metrics.status_code == 200 and "cerebrascan_" in metrics.text
    logged = secured_server.server.log_path.read_text(errors="replace")
    assert answer["study_id"] in logged  # the analysis logged to this file
    for text in (logged, metrics.text):
        assert not [value for value in PHI_VALUES if value in text]


def test_no_patient_data_in_debug_logs(deidentified, deidentified_logs) -> None:
    """Every record at DEBUG during a DICOM analysis: no identifying value (the off case, on a
    real server's log file: the job route test above)."""
    assert any(r.levelno == logging.DEBUG for r in deidentified_logs)
    assert any("DICOM study built" in r.getMessage() for r in deidentified_logs)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in deidentified_logs)
    assert not [value for value in PHI_VALUES if value in logged]
