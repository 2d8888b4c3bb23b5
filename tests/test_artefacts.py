"""Analyzer artefacts: atomic NIfTI writes in the study store and ``GET .../artefacts/{name}``."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from starlette.testclient import TestClient

from cerebrascan.serving.http.plugins import plugins_app
from cerebrascan.serving.http.studies import studies_app
from cerebrascan.store.artefacts import StudyArtefacts, StudyArtefactSink
from plugins.host import AnalyzerHost
from plugins.settings import PluginSettings

STUDY = "ab" * 16
SHAPE = (12, 10, 8)


def _affine() -> np.ndarray:
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = (5.0, -7.0, 3.0)
    return affine


def test_sink_writes_an_atomic_nifti_on_the_study_grid(tmp_path: Path) -> None:
    sink = StudyArtefactSink(StudyArtefacts(tmp_path), STUDY, _affine(), SHAPE)
    values = np.random.default_rng(0).random(SHAPE)
    url = sink.write_nifti("risk_map", values, description="a map " + "x" * 200)
    assert url == f"/studies/{STUDY}/artefacts/risk_map"
    assert [p.name for p in (tmp_path / STUDY).iterdir()] == ["risk_map.nii.gz"]
    image = nib.load(str(tmp_path / STUDY / "risk_map.nii.gz"))
    assert image.get_data_dtype() == np.float32  # float64 is stored as float32
    np.testing.assert_allclose(image.affine, _affine())
    np.testing.assert_allclose(np.asarray(image.dataobj), values, rtol=1e-6)
    assert image.header["descrip"].tobytes().startswith(b"a map xxx")
    sink.write_nifti("mask", np.zeros(SHAPE, bool), description="mask")
    assert nib.load(str(tmp_path / STUDY / "mask.nii.gz")).get_data_dtype() == np.uint8
    sink.write_nifti("half", np.full(SHAPE, 0.25, np.float16), description="float16 map")
    half = nib.load(str(tmp_path / STUDY / "half.nii.gz"))
    assert half.get_data_dtype() == np.float32  # NIfTI has no float16
    assert np.all(np.asarray(half.dataobj) == 0.25)


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("Bad Name", np.zeros(SHAPE), "must match"),
        ("segmentation", np.zeros(SHAPE), "reserved"),
        ("small", np.zeros((12, 10)), "the study's grid"),
        ("other_grid", np.zeros((12, 10, 9)), "the study's grid"),
        ("text", np.full(SHAPE, "a"), "must be numeric"),
    ],
)
def test_sink_refuses_bad_names_and_arrays_off_the_grid(
    tmp_path: Path, name: str, array: np.ndarray, message: str
) -> None:
    sink = StudyArtefactSink(StudyArtefacts(tmp_path), STUDY, _affine(), SHAPE)
    with pytest.raises(ValueError, match=message):
        sink.write_nifti(name, array, description="")
    assert not (tmp_path / STUDY).exists() or not any((tmp_path / STUDY).iterdir())


def test_artefact_route_serves_validates_and_404s(tmp_path: Path) -> None:
    sink = StudyArtefactSink(StudyArtefacts(tmp_path), STUDY, _affine(), SHAPE)
    sink.write_nifti(
        "hot-spot_2", np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.int16), description="ramp"
    )
    client = TestClient(studies_app(tmp_path))
    response = client.get(f"/{STUDY}/artefacts/hot-spot_2")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert np.asarray(image.dataobj)[11, 9, 7] == np.prod(SHAPE) - 1
    bad = client.get(f"/{STUDY}/artefacts/Hot.Spot")
    assert bad.status_code == 400
    assert "Hot.Spot" in bad.json()["error"]
    assert client.get(f"/{STUDY}/artefacts/" + "a" * 65).status_code == 400
    missing = client.get(f"/{STUDY}/artefacts/absent")
    assert missing.status_code == 404
    assert "absent.nii.gz" in missing.json()["error"]
    assert client.get(f"/{'cd' * 16}/artefacts/hot-spot_2").status_code == 404
    assert client.get("/not-a-study/artefacts/hot-spot_2").status_code == 400
    assert client.get(f"/{STUDY}/artefacts/..%2Fsegmentation").status_code in (400, 404)


def test_plugins_route_serves_the_listing() -> None:
    host = AnalyzerHost(PluginSettings(entry_points=False))
    client = TestClient(plugins_app(host))
    listing = client.get("/plugins").json()
    assert listing == host.listing().model_dump(mode="json")
    assert listing["plugins"][0]["name"] == "volumetrics"
    assert client.get("/plugins/x").status_code == 404
