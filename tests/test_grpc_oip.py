"""The Open Inference Protocol over gRPC, with tritonclient.grpc as the (unchanged) client.

The gRPC server runs in-process here with the real pipeline (default model, real analyzers,
real study store); ``tests/test_batching_serve.py`` does one round trip against the port of a
real ``bentoml serve``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.inputs.nifti import read_uploads
from cerebrascan.pipeline import AnalysisPipeline
from cerebrascan.registry import resolve_model
from cerebrascan.serving.grpc.server import start_oip_server
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import free_port
from schemas.analysis import AnalyzeOptions

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
MODEL = "cerebrascan-segmentation"


def case_tensor(case: Path) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's four channels as ``[1, 4, D, H, W]`` float32 and its affine."""
    images = [nib.load(modality_path(case, m)) for m in MODALITIES]
    stacked = np.stack([np.asarray(image.dataobj, dtype=np.float32) for image in images])
    return stacked[None], images[0].affine


def parameters_for(affine: np.ndarray) -> dict[str, str]:
    spacing = np.linalg.norm(affine[:3, :3], axis=0).tolist()
    return {"spacing": json.dumps(spacing), "affine": json.dumps(affine.tolist())}


@pytest.fixture(scope="module")
def pipeline(registered_default_model: str) -> AnalysisPipeline:
    settings = Settings()
    return AnalysisPipeline(settings, resolve_model(settings))


@pytest.fixture(scope="module")
def client(pipeline: AnalysisPipeline) -> Iterator[grpcclient.InferenceServerClient]:
    port = free_port()
    settings = Settings(grpc={"port": port, "host": "127.0.0.1"})
    server = start_oip_server(settings, lambda: pipeline)
    assert server is not None
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as grpc_client:
        yield grpc_client
    server.stop(grace=1).wait()


def infer(
    client: grpcclient.InferenceServerClient,
    data: np.ndarray,
    parameters: dict[str, str],
    datatype: str = "FP32",
    model: str = MODEL,
):
    tensor = grpcclient.InferInput("IMAGE", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], parameters=parameters, client_timeout=600)


def test_server_and_model_health_and_metadata(client, pipeline: AnalysisPipeline) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, pipeline.model.version)
    assert not client.is_model_ready("another-model")
    assert not client.is_model_ready(MODEL, "999")
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["name"] == MODEL
    assert metadata["versions"] == [pipeline.model.version]
    assert metadata["inputs"] == [
        {"name": "IMAGE", "datatype": "FP32", "shape": ["1", "4", "-1", "-1", "-1"]}
    ]
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {
        "SEGMENTATION": "UINT8",
        "FINDINGS": "BYTES",
    }
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("another-model")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.slow
def test_round_trip_gives_the_http_pipeline_answer(
    client, pipeline: AnalysisPipeline, phantom_case: Path, phantom_truth: dict
) -> None:
    data, affine = case_tensor(phantom_case)
    result = infer(client, data, parameters_for(affine))
    labels = result.as_numpy("SEGMENTATION")
    assert labels.dtype == np.uint8 and labels.shape == (1, *data.shape[2:])
    (findings_bytes,) = result.as_numpy("FINDINGS")
    findings = json.loads(findings_bytes)
    assert findings["model"]["version"] == pipeline.model.version
    assert findings["volumes_ml"]["WT"] == pytest.approx(
        phantom_truth["volumes_ml"]["WT"], rel=0.05
    )
    # the same files through the pipeline as POST /analyze runs it: the same labels
    files = {m: modality_path(phantom_case, m) for m in MODALITIES}
    study = read_uploads(files, MODALITIES, max_voxels=pipeline.settings.limits.max_voxels)
    direct = pipeline.run(study, AnalyzeOptions()).response
    stored = nib.load(pipeline.segmentation_path(direct.study_id))
    np.testing.assert_array_equal(labels[0], np.asarray(stored.dataobj, dtype=np.uint8))
    assert findings["volumes_ml"] == json.loads(direct.model_dump_json())["volumes_ml"]


def small_case() -> tuple[np.ndarray, dict[str, str]]:
    data = np.random.default_rng(7).uniform(1, 2, size=(1, 4, 8, 8, 8)).astype(np.float32)
    return data, parameters_for(np.diag([1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("shape", "needle"),
    [((1, 3, 8, 8, 8), "[1, 4, D, H, W]"), ((4, 8, 8, 8), "got [4, 8, 8, 8]")],
)
def test_wrong_shape_is_invalid_argument(client, shape: tuple[int, ...], needle: str) -> None:
    _, parameters = small_case()
    with pytest.raises(InferenceServerException) as error:
        infer(client, np.zeros(shape, np.float32), parameters)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert needle in error.value.message()


def test_wrong_dtype_is_invalid_argument(client) -> None:
    data, parameters = small_case()
    with pytest.raises(InferenceServerException) as error:
        infer(client, data.astype(np.float64), parameters, datatype="FP64")
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "FP32, got FP64" in error.value.message()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"spacing": None}, "parameter 'spacing' is required"),
        ({"affine": None}, "parameter 'affine' is required"),
        ({"spacing": "[1, 1]"}, "3 positive numbers"),
        ({"spacing": "[2, 1, 1]"}, "disagrees with the affine"),
        ({"affine": "[[1, 0], [0, 1]]"}, "finite 4x4 matrix"),
        ({"affine": "not json"}, "not valid JSON"),
        ({"options": '{"mirror_tta": "often"}'}, "parameter 'options'"),
    ],
)
def test_bad_parameters_are_invalid_argument(client, change: dict, needle: str) -> None:
    data, parameters = small_case()
    for key, value in change.items():
        if value is None:
            parameters.pop(key)
        else:
            parameters[key] = value
    with pytest.raises(InferenceServerException) as error:
        infer(client, data, parameters)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert needle in error.value.message()


def test_unusable_image_is_invalid_argument_from_the_pipeline(client) -> None:
    """NaN voxels pass the tensor checks; the voxel checks NIfTI uploads share refuse them."""
    data, parameters = small_case()
    data[0, 2, 1, 1, 1] = np.nan
    with pytest.raises(InferenceServerException) as error:
        infer(client, data, parameters)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "t2w" in error.value.message()


def test_grid_over_the_voxel_limit_is_resource_exhausted(pipeline: AnalysisPipeline) -> None:
    """``limits.max_voxels`` bounds a tensor's grid as it bounds a NIfTI header's."""
    port = free_port()
    settings = Settings(grpc={"port": port, "host": "127.0.0.1"}, limits={"max_voxels": 511})
    server = start_oip_server(settings, lambda: pipeline)
    assert server is not None
    data, parameters = small_case()
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as limited:
            with pytest.raises(InferenceServerException) as error:
                infer(limited, data, parameters)
    finally:
        server.stop(grace=1).wait()
    assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "[8, 8, 8] = 512 voxels, over the limit of 511" in error.value.message()


def test_unknown_model_is_not_found(client) -> None:
    data, parameters = small_case()
    with pytest.raises(InferenceServerException) as error:
        infer(client, data, parameters, model="another-model")
    assert error.value.status() == "StatusCode.NOT_FOUND"
