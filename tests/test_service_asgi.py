"""The BentoML service in-process (ASGI TestClient): /analyze, stored studies, bad input."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cerebrascan.inputs.case_folder import modality_path
from tests import nifti_faults as faults

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def _files(case: Path, **overrides: bytes) -> dict[str, tuple[str, bytes, str]]:
    files = {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }
    for name, payload in overrides.items():
        files[name] = (f"{name}.nii.gz", payload, "application/octet-stream")
    return files


def _error_text(response) -> str:
    return json.dumps(response.json())


@pytest.fixture(scope="module")
def analysed(asgi_client, phantom_case: Path) -> dict:
    response = asgi_client.post("/analyze", files=_files(phantom_case))
    assert response.status_code == 200, response.text
    return response.json()


def test_readyz_after_model_load(asgi_client) -> None:
    assert asgi_client.get("/readyz").status_code == 200


def test_analyze_reports_model_geometry_volumes_and_timings(
    analysed: dict, phantom_truth: dict, registered_default_model: str
) -> None:
    assert len(analysed["study_id"]) == 32
    assert analysed["model"]["version"] == registered_default_model
    assert analysed["model"]["alias"] == "champion"
    assert analysed["model"]["providers"] == ["CPUExecutionProvider"]
    assert analysed["geometry"]["shape"] == phantom_truth["shape"]
    assert np.allclose(analysed["geometry"]["affine"], phantom_truth["affine"])
    assert set(analysed["volumes_ml"]) == {"NETC", "SNFH", "ET", "TC", "WT"}
    volumes = analysed["volumes_ml"]
    assert volumes["WT"] == pytest.approx(volumes["NETC"] + volumes["SNFH"] + volumes["ET"])
    assert volumes["TC"] == pytest.approx(volumes["NETC"] + volumes["ET"])
    assert {"decode", "preprocess", "inference", "postprocess"} <= set(analysed["timings_ms"])
    assert "research use only" in analysed["notice"].lower()


def test_segmentation_is_on_the_input_grid_and_matches_the_volumes(
    asgi_client,
    analysed: dict,
    phantom_case: Path,
) -> None:
    response = asgi_client.get(analysed["segmentation_url"])
    assert response.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    reference = nib.load(str(modality_path(phantom_case, "t1n")))
    assert image.shape == reference.shape[:3]
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5)
    labels = np.asarray(image.dataobj)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert (labels > 0).sum() / 1000 == pytest.approx(analysed["volumes_ml"]["WT"], rel=1e-6)
    stored = asgi_client.get(f"/studies/{analysed['study_id']}").json()
    assert stored["volumes_ml"] == analysed["volumes_ml"]


def test_options_are_validated_and_echoed(asgi_client, phantom_case: Path) -> None:
    bad = asgi_client.post(
        "/analyze", files=_files(phantom_case), data={"options": json.dumps({"mirror": 1})}
    )
    assert bad.status_code == 400
    assert "mirror" in bad.text


def test_openapi_is_served(asgi_client) -> None:
    spec = asgi_client.get("/docs.json").json()
    assert "/analyze" in spec["paths"]


@pytest.mark.parametrize(
    ("field", "payload", "status", "message"),
    [
        ("t1c", faults.not_nifti(), 400, "t1c: not a NIfTI"),
        ("t2w", faults.truncated_gzip(), 400, "t2w: "),
        ("t1n", faults.nifti_bytes(np.ones((64, 64), np.float32)), 422, "t1n: image is 2-D"),
        ("t2f", faults.nifti_bytes(np.ones((16, 16, 16, 2, 3), np.float32)), 422, "5-D"),
        ("t1c", faults.with_value(np.nan), 422, "NaN"),
        ("t1c", faults.nifti_bytes(np.zeros((32, 32, 32), np.float32)), 422, "every voxel is zero"),
        ("t2w", faults.absurd_dimensions(), 413, "over the per-request budget"),
        ("t2f", faults.nifti_bytes(faults.brain_like()), 422, "t2f: shape"),
    ],
    ids=["not-nifti", "truncated", "2d", "5d", "nan", "all-zero", "absurd-dims", "shape-mismatch"],
)
def test_bad_input_is_a_4xx_naming_the_problem(
    asgi_client,
    phantom_case: Path,
    field: str,
    payload: bytes,
    status: int,
    message: str,
) -> None:
    response = asgi_client.post("/analyze", files=_files(phantom_case, **{field: payload}))
    assert response.status_code == status, response.text
    assert message in _error_text(response)


def test_affine_mismatch_is_refused(asgi_client, phantom_case: Path) -> None:
    image = nib.load(str(modality_path(phantom_case, "t2w")))
    affine = image.affine.copy()
    affine[1, 3] += 3.0
    moved = nib.Nifti1Image(np.asarray(image.dataobj), affine)
    response = asgi_client.post(
        "/analyze", files=_files(phantom_case, t2w=gzip.compress(moved.to_bytes(), compresslevel=1))
    )
    assert response.status_code == 422
    assert "t2w: affine differs" in _error_text(response)


def test_file_field_sent_as_a_url_is_refused_not_fetched(
    asgi_client, phantom_case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server tried to fetch a client-supplied URL")

    monkeypatch.setattr(httpx.AsyncClient, "get", no_network)
    files = _files(phantom_case)
    del files["t1n"]
    response = asgi_client.post(
        "/analyze", files=files, data={"t1n": "http://127.0.0.1:9/brain.nii.gz"}
    )
    assert response.status_code == 400
    assert "must be uploaded files" in response.text


def test_missing_modality_is_a_400_naming_it(asgi_client, phantom_case: Path) -> None:
    files = _files(phantom_case)
    del files["t2f"]
    response = asgi_client.post("/analyze", files=files)
    assert response.status_code == 400
    assert "t2f" in response.text


def test_upload_over_the_limit_is_413_before_parsing(
    asgi_client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service import SETTINGS

    limit = int(SETTINGS.limits.max_upload_mb * 1024 * 1024)
    big = io.BytesIO(b"\x00" * (limit + 1))
    response = asgi_client.post(
        "/analyze", files={"t1n": ("t1n.nii", big, "application/octet-stream")}
    )
    assert response.status_code == 413
    assert "upload limit" in response.text


def test_streamed_upload_over_the_limit_is_413(asgi_client) -> None:
    from service import SETTINGS

    limit = int(SETTINGS.limits.max_upload_mb * 1024 * 1024)
    chunk = b"\x00" * (1 << 20)

    def body():  # no Content-Length: the middleware must count the stream
        for _ in range(limit // len(chunk) + 2):
            yield chunk

    response = asgi_client.post(
        "/analyze",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 413
    assert "upload limit" in response.text


def test_unknown_and_malformed_study_ids(asgi_client) -> None:
    assert asgi_client.get(f"/studies/{'0' * 32}/segmentation").status_code == 404
    response = asgi_client.get("/studies/..%2F..%2Fetc/segmentation")
    assert response.status_code in (400, 404)
    assert asgi_client.get("/studies/not-an-id").status_code == 400
