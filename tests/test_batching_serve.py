"""The two-service design under a real ``bentoml serve``: the front and the runner service
(``bentoml.depends``, batchable API). Concurrent studies give the labels sequential ones give,
the runner formed batches of more than one case, and the gRPC port started with the service
answers tritonclient."""

from __future__ import annotations

import gzip
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.testing.server_process import bentoml_server, free_port
from tests.atlas_options import atlas_by_voxel_index
from tests.conftest import SESSION_DATA_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
BATCH_METRIC = re.compile(
    r'^bentoml_service_adaptive_batch_size_(sum|count)\{[^}]*method_name="segment"[^}]*\} '
    r"([0-9.eE+-]+)$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def server(registered_default_model: str, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("batching-serve") / "bentoml.log"
    grpc_port = free_port()
    env = {
        "CEREBRASCAN_DATA_DIR": str(SESSION_DATA_DIR),
        "CEREBRASCAN_BATCHING__REMOTE_RUNNER": "true",
        "CEREBRASCAN_BATCHING__MAX_BATCH_SIZE": "4",
        "CEREBRASCAN_GRPC__PORT": str(grpc_port),
        "CEREBRASCAN_GRPC__HOST": "127.0.0.1",
        # its own Prometheus folder: another `bentoml serve` starting would empty a shared one
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")),
    }
    with bentoml_server(env, log, ready_timeout_s=300) as running:
        running.grpc_port = grpc_port  # type: ignore[attr-defined]
        yield running


def post_case(url: str, case: Path, options: dict | None = None) -> dict:
    files = {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }
    data = {"options": json.dumps(options)} if options else None
    response = httpx.post(f"{url}/analyze", files=files, data=data, timeout=900)
    assert response.status_code == 200, response.text
    return response.json()


def labels_of(url: str, answer: dict) -> np.ndarray:
    response = httpx.get(f"{url}{answer['segmentation_url']}", timeout=120)
    assert response.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    return np.asarray(image.dataobj, dtype=np.uint8)


def batch_counters(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in BATCH_METRIC.findall(text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def test_concurrent_studies_are_batched_and_give_the_sequential_labels(
    server, phantom_cases: list[Path]
) -> None:
    # the atlas mapped by voxel index: its registration is the slowest analyzer step and
    # nothing here concerns it (the analyzers still run)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        options = {"analyzers": atlas_by_voxel_index(client)}
    sequential = [post_case(server.url, case, options) for case in phantom_cases]
    assert all("runner service" in answer["model"]["runner"] for answer in sequential)
    expected = [labels_of(server.url, answer) for answer in sequential]
    assert all(labels.any() for labels in expected)

    before = batch_counters(server.url)
    # as many as the front's max_concurrency (4): more would get 429 Too Many Requests
    order = [phantom_cases[i % len(phantom_cases)] for i in range(4)]
    with ThreadPoolExecutor(len(order)) as pool:
        answers = list(pool.map(lambda case: post_case(server.url, case, options), order))
    after = batch_counters(server.url)

    for index, answer in enumerate(answers):
        reference = sequential[index % len(phantom_cases)]
        np.testing.assert_array_equal(
            labels_of(server.url, answer), expected[index % len(phantom_cases)]
        )
        assert answer["volumes_ml"] == reference["volumes_ml"]
    calls = after[1] - before[1]
    assert calls >= 1
    mean_batch = (after[0] - before[0]) / calls
    assert after[0] - before[0] == len(order)  # every case went through the runner service
    assert mean_batch > 1, f"{calls} runner calls for {len(order)} concurrent cases"


def test_grpc_port_started_with_the_service_answers_tritonclient(
    server, phantom_case: Path, phantom_truth: dict
) -> None:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("cerebrascan-segmentation")
        images = [nib.load(modality_path(phantom_case, m)) for m in MODALITIES]
        data = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in images])[None]
        affine = images[0].affine
        tensor = grpcclient.InferInput("IMAGE", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        parameters = {
            "spacing": json.dumps(np.linalg.norm(affine[:3, :3], axis=0).tolist()),
            "affine": json.dumps(affine.tolist()),
        }
        result = client.infer(
            "cerebrascan-segmentation", [tensor], parameters=parameters, client_timeout=900
        )
    labels = result.as_numpy("SEGMENTATION")
    assert labels.shape == (1, *data.shape[2:])
    findings = json.loads(result.as_numpy("FINDINGS")[0])
    assert "runner service" in findings["model"]["runner"]
    assert findings["volumes_ml"]["WT"] == pytest.approx(
        phantom_truth["volumes_ml"]["WT"], rel=0.05
    )
