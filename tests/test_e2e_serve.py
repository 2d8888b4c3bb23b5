"""One real ``bentoml serve`` process: a phantom case posted over HTTP, checked against truth."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from cerebrascan.inputs.case_folder import modality_path, read_labels
from cerebrascan.testing.server_process import bentoml_server
from cerebrascan.training.metrics import region_metrics
from tests.conftest import SESSION_DATA_DIR

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(registered_default_model: str, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve") / "bentoml.log"
    with bentoml_server({"CEREBRASCAN_DATA_DIR": str(SESSION_DATA_DIR)}, log) as running:
        yield running


def test_phantom_case_over_http_matches_truth(
    server, phantom_case: Path, phantom_truth: dict
) -> None:
    files = {
        m: (f"{m}.nii.gz", modality_path(phantom_case, m).read_bytes(), "application/gzip")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }
    response = httpx.post(f"{server.url}/analyze", files=files, timeout=300)
    assert response.status_code == 200, response.text
    result = response.json()
    truth_wt = phantom_truth["volumes_ml"]["WT"]
    assert result["volumes_ml"]["WT"] == pytest.approx(truth_wt, rel=0.05)

    segmentation = httpx.get(f"{server.url}{result['segmentation_url']}", timeout=60)
    assert segmentation.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(segmentation.content))
    reference = read_labels(phantom_case)
    assert image.shape == reference.shape
    metrics = region_metrics(np.asarray(image.dataobj, np.uint8), reference, (1.0, 1.0, 1.0))
    assert metrics["WT"]["dice"] >= 0.85, json.dumps(metrics)


def test_bad_upload_over_http_is_4xx(server) -> None:
    files = {
        m: (f"{m}.nii", b"not an image at all" * 30, "application/octet-stream")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }
    response = httpx.post(f"{server.url}/analyze", files=files, timeout=60)
    assert response.status_code == 400
    assert "not a NIfTI" in response.text


def test_plugins_are_listed_over_http(server) -> None:
    response = httpx.get(f"{server.url}/plugins", timeout=60)
    assert response.status_code == 200
    listing = response.json()
    assert "volumetrics" in {p["name"] for p in listing["plugins"]}
    assert listing["failed_to_load"] == {}


def test_metrics_expose_stage_and_analyzer_latency_and_model_version(
    server, phantom_case: Path
) -> None:
    # BentoML's /metrics needs the real server (its in-process ASGI app never answers it).
    files = {
        m: (f"{m}.nii.gz", modality_path(phantom_case, m).read_bytes(), "application/gzip")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }
    answer = httpx.post(f"{server.url}/analyze", files=files, timeout=300).json()
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for stage in ("decode", "preprocess", "inference", "postprocess", "analyzers", "store"):
        assert f'cerebrascan_stage_duration_seconds_count{{stage="{stage}"}}' in text, stage
    assert 'cerebrascan_analyzer_duration_seconds_count{analyzer="volumetrics"}' in text
    model = answer["model"]
    # multiprocess gauges carry a pid label too
    served = [
        line for line in text.splitlines() if line.startswith("cerebrascan_serving_model_info{")
    ]
    assert any(
        f'name="{model["name"]}"' in line
        and f'version="{model["version"]}"' in line
        and 'alias="champion"' in line
        and line.endswith(" 1.0")
        for line in served
    ), served
    assert answer["study_id"] not in text
