"""PACS integration on a real Orthanc (issue 16, item 6).

A small phantom study is C-STOREd to a private Orthanc, which C-STOREs it on (REST
``/modalities/{id}/store``) to the ``dicom-listen`` receiver running in this process; the
receiver analyses it once through the ``POST /analyze/dicom`` path. Its SEG, SR and PDF are then
sent back with ``POST /studies/{id}/dicom/send``, by STOW-RS and by C-STORE, and read from
Orthanc with highdicom. Sending the study to the receiver again does not analyse it again.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pynetdicom import AE, evt

from cerebrascan.pacs.spool import StudySpool, study_key
from cerebrascan.pacs.transport import disable_nagle
from cerebrascan.serving.http.auth import route_need
from cerebrascan.testing.dicom_phantoms import PATIENT
from cerebrascan.testing.server_process import free_port
from cerebrascan.views.palette import LABELS

pytestmark = pytest.mark.e2e

AUTH_ENV = "CEREBRASCAN_TEST_ORTHANC_AUTHORIZATION"
NAMES = {entry.label: entry.name for entry in LABELS}
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
QUIET_SECONDS = 1.0


@pytest.fixture(scope="module")
def pacs_phantom(phantom_case: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The phantom case as a small DICOM study: the four contrasts at 2 x 2 x 3 mm."""
    from cerebrascan.testing.dicom_phantoms import default_plans, write_dicom_study

    plans = [
        dataclasses.replace(plan, spacing_mm=(2.0, 2.0, 3.0))
        for plan in default_plans(distractors=False)
    ]
    return write_dicom_study(
        phantom_case, tmp_path_factory.mktemp("pacs-phantom"), seed=61, plans=plans
    )


def _c_store(files: list[Path], port: int, called_ae: str) -> None:
    """C-STORE ``files`` to a DICOM node over one association; every status must be success."""
    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title="PACS-TEST-SCU")
    for sop_class in sorted({str(d.SOPClassUID) for d in datasets}):
        ae.add_requested_context(sop_class, str(datasets[0].file_meta.TransferSyntaxUID))
    association = ae.associate(
        "127.0.0.1", port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, disable_nagle)]
    )
    assert association.is_established
    try:
        statuses = [association.send_c_store(dataset).Status for dataset in datasets]
    finally:
        association.release()
    assert set(statuses) == {0}


@pytest.fixture(scope="module")
def orthanc_study(orthanc: Any, pacs_phantom: Any) -> str:
    """The phantom stored in Orthanc; returns Orthanc's id of the study."""
    _c_store(pacs_phantom.files, orthanc.dicom_port, orthanc.aet)
    with orthanc.client() as client:
        found = client.post("/tools/lookup", content=pacs_phantom.study_uid).json()
        (study,) = [item for item in found if item["Type"] == "Study"]
        assert len(client.get(f"/studies/{study['ID']}/instances").json()) == len(
            pacs_phantom.files
        )
    return str(study["ID"])


@pytest.fixture(scope="module")
def listener(asgi_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The DICOM receiver, in this process, analysing into the service's store."""
    import service
    from cerebrascan.inputs.dicom.selection import load_rules
    from cerebrascan.pacs.analysis import SpooledStudyAnalyser
    from cerebrascan.pacs.listener import DicomListener
    from cerebrascan.pipeline import AnalysisPipeline, build_analyzer_host
    from cerebrascan.registry import resolve_model

    settings = service.SETTINGS.model_copy(deep=True)
    settings.pacs.listen_quiet_seconds = QUIET_SECONDS
    settings.pacs.listen_skull_stripped = True  # the phantom is a brain without skull
    # volumetrics only (the SR's diameter): the other analyzers have their own tests
    host = build_analyzer_host(settings, builtin_plugins=("plugins.builtin.volumetrics",))
    pipeline = AnalysisPipeline(settings, resolve_model(settings), host=host)
    analyser = SpooledStudyAnalyser(
        pipeline, load_rules(settings.dicom.rules_file), strip_skull=None, register=None
    )
    receiver = DicomListener(
        settings.pacs, StudySpool(tmp_path_factory.mktemp("spool")), analyser, port=0
    )
    receiver.start()
    yield receiver
    receiver.stop()


def _store_to_listener(orthanc: Any, orthanc_study: str, listener: Any) -> None:
    with orthanc.client() as client:
        modality = {"AET": listener.settings.ae_title, "Host": "127.0.0.1", "Port": listener.port}
        assert client.put("/modalities/cerebrascan", json=modality).status_code == 200
        sent = client.post(
            "/modalities/cerebrascan/store",
            json={"Resources": [orthanc_study], "Synchronous": True},
        )
        assert sent.status_code == 200, sent.text


@pytest.fixture(scope="module")
def received_study(
    orthanc: Any, orthanc_study: str, listener: Any, pacs_phantom: Any, asgi_client: Any
) -> dict[str, Any]:
    """The phantom pulled from Orthanc by the receiver and analysed: the stored answer."""
    _store_to_listener(orthanc, orthanc_study, listener)
    state = listener.wait_for(pacs_phantom.study_uid, timeout=300)
    assert state.state == "done", state.error
    response = asgi_client.get(f"/studies/{state.study_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_study_from_orthanc_is_analysed_once_on_the_dicom_path(
    received_study: dict[str, Any], listener: Any, pacs_phantom: Any
) -> None:
    state = listener.spool.study(study_key(pacs_phantom.study_uid))
    assert state.instances == len(pacs_phantom.files) and state.late_instances == 0
    assert listener.analysed == 1
    # the DICOM path's answer: the series chosen per contrast, labels on the t1c grid
    chosen = {role: entry["series_uid"] for role, entry in received_study["dicom"]["roles"].items()}
    assert chosen == pacs_phantom.series_uids
    assert tuple(received_study["geometry"]["shape"]) == pacs_phantom.reference_shape
    assert received_study["volumes_ml"]["WT"] > 0


def test_a_study_sent_again_is_kept_but_not_analysed_again(
    received_study: dict[str, Any],
    orthanc: Any,
    orthanc_study: str,
    listener: Any,
    pacs_phantom: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cerebrascan")
    _store_to_listener(orthanc, orthanc_study, listener)  # answered once every file is spooled
    key = study_key(pacs_phantom.study_uid)
    state = listener.spool.study(key)
    assert state.late_instances == len(pacs_phantom.files)
    # logged once, by spool key: no UID, no patient attribute
    late_lines = [r.getMessage() for r in caplog.records if "late/" in r.getMessage()]
    assert len(late_lines) == 1 and key in late_lines[0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (pacs_phantom.study_uid, *PATIENT.values()):
        assert str(secret) not in logged
    # however long it stays quiet, the study is not due again
    assert listener.analyse_due(now=time.monotonic() + 3600) == []
    assert listener.analysed == 1
    assert listener.spool.study(key).study_id == received_study["study_id"]


def test_the_spool_claims_a_study_once_and_does_not_resume_an_interrupted_one(
    tmp_path: Path,
) -> None:
    spool = StudySpool(tmp_path)
    spool.store("1.2.3", "1.2.3.1", b"first")
    spool.store("1.2.3", "1.2.3.1", b"first")  # the same instance twice: kept once
    spool.store("1.2.3", "1.2.3.2", b"second")
    key = study_key("1.2.3")
    assert spool.due(60.0) == []  # not quiet yet
    assert spool.due(60.0, now=time.monotonic() + 61) == [key]
    files = spool.claim(key)
    assert files is not None and len(files) == 2
    assert spool.claim(key) is None  # a second poller gets nothing
    assert spool.store("1.2.3", "1.2.3.3", b"late").late
    # a restart finds the claimed study without a result: reported, never analysed again
    restarted = StudySpool(tmp_path)
    state = restarted.study(key)
    assert state is not None and state.state == "failed" and "interrupted" in str(state.error)
    assert restarted.due(0.0, now=time.monotonic() + 3600) == []
    assert state.instances == 2 and state.late_instances == 1


@pytest.fixture(scope="module")
def targets(orthanc: Any) -> Iterator[dict[str, Any]]:
    """Send targets pointing at the Orthanc: STOW-RS (basic auth from the environment), DIMSE,
    one with a wrong password and one where nothing listens."""
    import service
    from cerebrascan.pacs.settings import DicomWebTarget, DimseTarget

    user, password = orthanc.auth
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    wrong = base64.b64encode(f"{user}:not-the-password".encode()).decode()
    added = {
        "orthanc-web": DicomWebTarget(url=orthanc.dicomweb_url, auth_header_env=AUTH_ENV),
        "orthanc-dimse": DimseTarget(
            host="127.0.0.1", port=orthanc.dicom_port, called_ae="ORTHANC"
        ),
        "wrong-password": DicomWebTarget(
            url=orthanc.dicomweb_url, auth_header_env=AUTH_ENV + "_WRONG"
        ),
        "nobody-listens": DimseTarget(
            host="127.0.0.1", port=free_port(), called_ae="NOBODY", timeout_seconds=5
        ),
    }
    # the served settings (read when service.py was imported) gain the targets for this module
    configured = service.SETTINGS.pacs.targets
    configured.update(added)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(AUTH_ENV, f"Basic {token}")
        env.setenv(AUTH_ENV + "_WRONG", f"Basic {wrong}")
        yield added
    for name in added:
        configured.pop(name, None)


def _from_orthanc(orthanc: Any, sop_instance_uid: str) -> pydicom.Dataset:
    with orthanc.client() as client:
        found = client.post("/tools/lookup", content=sop_instance_uid).json()
        (instance,) = [item for item in found if item["Type"] == "Instance"]
        data = client.get(f"/instances/{instance['ID']}/file")
        assert data.status_code == 200
        return pydicom.dcmread(io.BytesIO(data.content))


def _delete_from_orthanc(orthanc: Any, sop_instance_uids: list[str]) -> None:
    with orthanc.client() as client:
        for uid in sop_instance_uids:
            for item in client.post("/tools/lookup", content=uid).json():
                assert client.delete(f"/instances/{item['ID']}").status_code == 200


def _check_results_in_orthanc(
    orthanc: Any, answer: dict[str, Any], study: dict[str, Any], pacs_phantom: Any
) -> None:
    """SEG, SR and PDF are in Orthanc; the SEG's segments are the study's labels and the SR's
    volumes its ``volumes_ml``."""
    objects = {o["kind"]: o for o in answer["objects"]}
    assert set(objects) == {"seg", "sr", "pdf"} and all(o["stored"] for o in objects.values())
    seg = hd.seg.Segmentation.from_dataset(
        _from_orthanc(orthanc, objects["seg"]["sop_instance_uid"])
    )
    assert seg.StudyInstanceUID == pacs_phantom.study_uid
    labels = [str(s.TrackingID) for s in seg.SegmentSequence if "TrackingID" in s]
    present = [NAMES[label] for label in sorted(NAMES) if study["volumes_ml"][NAMES[label]] > 0]
    assert labels == present
    sr = hd.sr.Comprehensive3DSR.from_dataset(
        _from_orthanc(orthanc, objects["sr"]["sop_instance_uid"])
    )
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {
        objects["seg"]["sop_instance_uid"]
    }
    measured = {}
    for group in groups:
        (measurement,) = group.get_measurements()
        measured[str(group.tracking_identifier).split(" ")[0]] = measurement.value
    assert measured  # a tumour was found, so there are volumes to compare
    for name, value in measured.items():
        assert value == pytest.approx(study["volumes_ml"][name], abs=1e-3)
    pdf = _from_orthanc(orthanc, objects["pdf"]["sop_instance_uid"])
    assert pdf.SOPClassUID == ENCAPSULATED_PDF
    assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF-")


def test_results_go_back_to_orthanc_by_stow_rs_and_by_c_store(
    asgi_client: Any,
    received_study: dict[str, Any],
    targets: dict[str, Any],
    orthanc: Any,
    pacs_phantom: Any,
) -> None:
    study_id = received_study["study_id"]
    web = asgi_client.post(f"/studies/{study_id}/dicom/send", json={"target": "orthanc-web"})
    assert web.status_code == 200, web.text
    assert web.json()["kind"] == "dicomweb"
    _check_results_in_orthanc(orthanc, web.json(), received_study, pacs_phantom)
    # the same SEG and SR again, over DIMSE this time, into an Orthanc that no longer has them
    _delete_from_orthanc(orthanc, [o["sop_instance_uid"] for o in web.json()["objects"]])
    dimse = asgi_client.post(f"/studies/{study_id}/dicom/send", json={"target": "orthanc-dimse"})
    assert dimse.status_code == 200, dimse.text
    assert dimse.json()["kind"] == "dimse"
    assert all(o["status"] == "0x0000" for o in dimse.json()["objects"])
    _check_results_in_orthanc(orthanc, dimse.json(), received_study, pacs_phantom)
    assert (
        dimse.json()["objects"][0]["sop_instance_uid"]
        == web.json()["objects"][0]["sop_instance_uid"]
    )  # the one cached SEG the SR references


def test_send_refusals_are_4xx_or_502_with_a_message(
    asgi_client: Any,
    received_study: dict[str, Any],
    reported_study: dict[str, Any],
    targets: dict[str, Any],
) -> None:
    assert route_need(f"/studies/{received_study['study_id']}/dicom/send", "POST") == "admin"
    study = f"/studies/{received_study['study_id']}/dicom/send"
    unknown = asgi_client.post(study, json={"target": "no-such-pacs"})
    assert unknown.status_code == 400 and "no-such-pacs" in unknown.json()["error"]
    assert "orthanc-web" in unknown.json()["error"]  # the configured names
    bad_body = asgi_client.post(study, content=b"orthanc-web")
    assert bad_body.status_code == 400 and "target" in bad_body.json()["error"]
    nifti = asgi_client.post(
        f"/studies/{reported_study['study_id']}/dicom/send", json={"target": "orthanc-web"}
    )
    assert nifti.status_code == 409 and "no DICOM source" in nifti.json()["error"]
    missing = asgi_client.post(f"/studies/{'0' * 32}/dicom/send", json={"target": "orthanc-web"})
    assert missing.status_code == 404
    refused = asgi_client.post(study, json={"target": "wrong-password"})
    assert refused.status_code == 502 and "401" in refused.json()["error"]
    unreachable = asgi_client.post(study, json={"target": "nobody-listens"})
    assert unreachable.status_code == 502
    assert "nobody-listens" in unreachable.json()["error"]


@pytest.mark.slow
def test_the_dicom_listen_command_answers_echo_and_stops_on_sigterm(
    registered_default_model: str, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    environment = {
        **os.environ,
        "CEREBRASCAN_PACS__SPOOL_DIR": str(tmp_path / "spool"),
        # one analyzer: the command's wiring is under test, not the analyzers' start-up
        "CEREBRASCAN_PLUGINS__ALLOW": '["volumetrics"]',
    }
    command = [sys.executable, "-m", "cerebrascan.cli", "dicom-listen", "--port", str(port)]
    log = tmp_path / "listen.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=output)
    try:
        ae = AE(ae_title="PACS-TEST-SCU")
        ae.add_requested_context("1.2.840.10008.1.1")  # Verification
        deadline = time.monotonic() + 120
        echoed = None
        while echoed is None and time.monotonic() < deadline and process.poll() is None:
            association = ae.associate("127.0.0.1", port, ae_title="CEREBRASCAN")
            if association.is_established:
                echoed = association.send_c_echo().Status
                association.release()
            else:
                time.sleep(0.2)  # a readiness poll: the association decides
        assert echoed == 0, log.read_text()[-2000:]
        assert (tmp_path / "spool").is_dir()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
