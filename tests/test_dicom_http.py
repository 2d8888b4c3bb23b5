"""``POST /dicom/inspect`` and ``POST /analyze/dicom`` through the service's ASGI app.

One phantom study written as DICOM (tests/conftest.py ``dicom_phantom``: four contrasts on four
grids, distractors, a localizer) is inspected and analysed once; every bad input gets a 4xx
with a message naming the problem.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cerebrascan.testing.dicom_phantoms import PATIENT

SKULL_STRIPPED = json.dumps({"skull_stripped": True})


def _archive(phantom) -> tuple[str, bytes, str]:
    return ("study.zip", Path(phantom.archive).read_bytes(), "application/zip")


@pytest.fixture(scope="module")
def dicom_answer(asgi_client, dicom_phantom, caplog_module) -> dict:
    response = asgi_client.post(
        "/analyze/dicom",
        files={"archive": _archive(dicom_phantom)},
        data={"options": SKULL_STRIPPED},
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def caplog_module() -> object:
    """Every log record of this module's requests (to check no patient data is logged)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)


def test_inspect_proposes_the_four_series(asgi_client, dicom_phantom) -> None:
    response = asgi_client.post("/dicom/inspect", files={"archive": _archive(dicom_phantom)})
    assert response.status_code == 200, response.text
    inventory = response.json()
    assert inventory["studies"] == [dicom_phantom.study_uid]
    assert {r: p["series_uid"] for r, p in inventory["roles"].items()} == (
        dicom_phantom.series_uids
    )
    assert inventory["problems"] == []
    assert all(check["ok"] for check in inventory["checks"])
    by_uid = {s["series_uid"]: s for s in inventory["series"]}
    flair = by_uid[dicom_phantom.series_uids["t2f"]]
    assert flair["orientation"] == "axial" and flair["oblique_deg"] == pytest.approx(10, abs=0.01)
    assert flair["inversion_time_ms"] == 2500 and flair["slice_count"] > 20
    t1c = by_uid[dicom_phantom.series_uids["t1c"]]
    assert t1c["contrast_agent"] == "Gadobutrol" and t1c["acquisition"] == "3D"
    assert inventory["roles"]["t1c"]["rule"].startswith("t1c #0")
    assert len(inventory["rejected"]) >= 3  # localizer, DWI trace, ADC
    assert len(inventory["series"]) == 8


def test_analyze_dicom_segments_on_the_reference_grid(
    asgi_client, dicom_answer, dicom_phantom
) -> None:
    truth = dicom_phantom.truth_volumes_ml["WT"]
    assert abs(dicom_answer["volumes_ml"]["WT"] - truth) / truth < 0.05
    section = dicom_answer["dicom"]
    assert section["reference_series_uid"] == dicom_phantom.series_uids["t1c"]
    assert {r: v["series_uid"] for r, v in section["roles"].items()} == dicom_phantom.series_uids
    assert section["roles"]["t2f"]["resampling"] == "geometry"
    assert section["brain_mask"]["applied"] is False
    for stage in ("dicom_index", "dicom_volumes", "dicom_grid"):
        assert dicom_answer["timings_ms"][stage] > 0
    labels = asgi_client.get(dicom_answer["segmentation_url"])
    assert labels.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(labels.content))
    assert list(image.shape) == section["grid"]["shape"]
    assert np.allclose(image.affine, np.asarray(dicom_answer["geometry"]["affine"]), atol=1e-4)


def test_reference_headers_are_kept_without_pixels(dicom_answer) -> None:
    from cerebrascan.settings import Settings

    folder = Settings().studies_dir / dicom_answer["study_id"]
    headers = json.loads((folder / "dicom_source.json").read_text())
    assert len(headers) == dicom_answer["dicom"]["grid"]["shape"][2]
    assert all("7FE00010" not in header for header in headers)
    series_uids = {h["0020000E"]["Value"][0] for h in headers}
    assert series_uids == {dicom_answer["dicom"]["reference_series_uid"]}


def test_no_patient_data_in_logs(dicom_answer, caplog_module) -> None:
    logged = "\n".join(record.getMessage() for record in caplog_module)
    assert "DICOM study built" in logged  # the analysis did log through these handlers
    for value in PATIENT.values():
        assert value not in logged


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("route", ["/dicom/inspect", "/analyze/dicom"])
def test_bad_uploads_get_a_4xx_naming_the_problem(asgi_client, dicom_phantom, route) -> None:
    flair_files = [
        p for p in dicom_phantom.files if p.parent == dicom_phantom.series_folders["t2f"]
    ]
    cases = [
        ({"archive": ("x.zip", b"not a zip at all", "application/zip")}, {}, 400, "zip"),
        (
            {"archive": ("x.zip", _zip_bytes({"../evil.dcm": b"x"}), "application/zip")},
            {},
            400,
            "'..'",
        ),
        ({}, {"series_map": "{}"}, 400, "no DICOM upload"),
        (
            {"archive": ("x.zip", _zip_bytes({"notes.txt": b"hello"}), "application/zip")},
            {},
            422,
            "no DICOM image series",
        ),
        (
            {"archive": _archive(dicom_phantom)},
            {"series_map": "{not json"},
            400,
            "series_map",
        ),
    ]
    if route == "/analyze/dicom":
        cases += [
            (
                {"archive": _archive(dicom_phantom)},
                {"series_map": json.dumps({"t2f": "1.2.3.4"}), "options": SKULL_STRIPPED},
                422,
                "not in the upload",
            ),
            (
                [("files", (p.name, p.read_bytes(), "application/dicom")) for p in flair_files],
                {"options": SKULL_STRIPPED},
                422,
                "no series matches the rules for t1n",
            ),
        ]
    for files, data, status, words in cases:
        response = asgi_client.post(route, files=files, data=data)
        assert response.status_code == status, (words, response.text)
        # BentoML 1.4 answers its API errors as [{"error": ...}], its validation errors as
        # {"error": ..., "detail": [...]} (naming the field in "loc")
        assert "error" in response.text and words in response.text, (words, response.text)
