"""Untrusted text on the served path (issue 24): a study's ``options.comment`` is kept beside it
for the LLM report writer only, never in its findings, answer or logs; a report names the field,
not the text. The real LLM reading it is in ``tests/test_report_llm.py``.
"""

from __future__ import annotations

import json
import stat

import pytest

from cerebrascan.inputs.study import untrusted_text_from_dicom
from cerebrascan.report.supplied_text import SUPPLIED_TEXT_FILE, save_supplied_text
from cerebrascan.settings import Settings
from tests.conftest import PLANTED_COMMENT


def test_the_comment_is_kept_apart_from_the_findings(
    asgi_client, commented_study: dict, caplog
) -> None:
    study_id = commented_study["study_id"]
    folder = Settings().studies_dir / study_id
    kept = folder / SUPPLIED_TEXT_FILE
    assert json.loads(kept.read_text()) == {"options.comment": PLANTED_COMMENT}
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    answer = json.dumps(commented_study)
    assert "benign" not in answer and "Ignore" not in answer
    for path in folder.iterdir():
        if path != kept:
            assert b"benign" not in path.read_bytes(), path.name  # result.json, label maps
    caplog.set_level("DEBUG")
    report = asgi_client.get(f"/studies/{study_id}/report?format=md")
    assert report.status_code == 200
    assert "options.comment" in report.text and "benign" not in report.text
    assert "benign" not in caplog.text


def test_a_comment_over_the_limit_is_refused_without_echo(asgi_client, phantom_case) -> None:
    from cerebrascan.inputs.case_folder import modality_path

    files = {
        m: (f"{m}.nii.gz", modality_path(phantom_case, m).read_bytes(), "application/gzip")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }
    comment = "PATIENT-NAME " * 100
    response = asgi_client.post(
        "/analyze", files=files, data={"options": json.dumps({"comment": comment})}
    )
    assert response.status_code == 400
    assert "comment has 1300 characters, over the limit of 1000" in response.text
    assert "PATIENT-NAME" not in response.text


def test_nothing_is_kept_where_no_llm_writer_may_run(tmp_path) -> None:
    from cerebrascan.report.settings import ReportSettings

    assert not ReportSettings(llm_override_roles=[]).keeps_supplied_text()
    assert save_supplied_text(tmp_path, {}) is None
    assert not (tmp_path / SUPPLIED_TEXT_FILE).exists()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (
            {"StudyDescription": " MR BRAIN ", "PatientName": "Doe^John", "SeriesDescription": ""},
            {"dicom.StudyDescription": "MR BRAIN"},
        ),
        (
            {"ReasonForTheRequestedProcedure": "x" * 1200, "AdditionalPatientHistory": None},
            {"dicom.ReasonForTheRequestedProcedure": "x" * 1000},
        ),
    ],
)
def test_dicom_free_text_fields_map_to_untrusted_text(attributes: dict, expected: dict) -> None:
    assert untrusted_text_from_dicom(attributes) == expected
