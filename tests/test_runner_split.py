"""The Kubernetes split on this machine: the runner service and the front as two separate
``bentoml serve`` processes on two ports, linked by ``batching.runner_url`` and a shared token;
and the ``deploy/kubernetes/`` manifests validated offline against the Kubernetes schemas.

One pair of servers for the module. What crosses the wire here is JSON (arrays as base64, never
a pickle), so the wire form and its refusals are tested without a server too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from cerebrascan.errors import RunnerUnavailableError
from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.serving.runner_service import (
    RemoteSegmentationRunner,
    RunnerCase,
    RunnerResult,
    array_from_wire,
    build_runner_service,
)
from cerebrascan.serving.settings import BatchingSettings
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import RunningServer, bentoml_server
from schemas.model_spec import ModelSpec
from tests.conftest import REPO_ROOT, SESSION_DATA_DIR
from tests.test_runner_request_id import remote_for

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
TOKEN = "runner-token-for-the-split-test-0123456789"
MANIFESTS = sorted((REPO_ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"


# --- the wire form: JSON with base64 arrays ------------------------------------------------


def test_arrays_round_trip_through_json_bit_for_bit() -> None:
    volume = np.random.default_rng(0).standard_normal((4, 5, 6, 7)).astype(np.float32)
    case = RunnerCase(volume=volume, mirror_tta=True, request_id="abc-1")
    decoded = RunnerCase.model_validate_json(case.model_dump_json())
    assert decoded.volume.dtype == np.float32 and decoded.volume.shape == volume.shape
    assert np.array_equal(decoded.volume, volume)
    decoded.volume[0, 0, 0, 0] = 1.0  # writable, like an unpickled array
    result = RunnerResult(probabilities=volume.astype(np.float16), engine="onnxruntime")
    back = RunnerResult.model_validate_json(result.model_dump_json())
    assert back.probabilities is not None and back.probabilities.dtype == np.float16
    assert np.array_equal(back.probabilities, volume.astype(np.float16))


def _wire(dtype: str, shape: list[int], data: bytes) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data": base64.b64encode(data).decode()}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (_wire("object", [1], b"\0" * 8), "dtype must be one of"),
        (_wire("float32", [2, 2], b"\0" * 12), "holds 12 bytes"),
        (_wire("float32", [-1], b""), "shape must be"),
        ({"dtype": "float32", "shape": [1], "data": "%%%"}, "not base64"),
        ({"dtype": "float32", "shape": [1]}, "dtype, shape and data"),
        ([1.0, 2.0], "dtype, shape and data"),
    ],
)
def test_a_malformed_wire_array_is_refused_naming_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        array_from_wire(value)
    with pytest.raises(ValidationError, match=message):
        RunnerCase.model_validate_json(json.dumps({"volume": value}))


class _DroppingService:
    """A runner service handle whose first ``segment`` call fails as aiohttp fails when the
    connection closes before the response body is read. A test double: that race (seen once
    in a soak) cannot be caused on demand against a real server."""

    def __init__(self, failure: BaseException, failures: int = 1) -> None:
        self.failure = failure
        self.failures = failures
        self.calls = 0

    def segment(self, cases: list[RunnerCase]) -> list[RunnerResult]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.failure
        shape = (4, *cases[0].volume.shape[1:])
        probabilities = np.full(shape, 0.25, dtype=np.float16)
        return [RunnerResult(probabilities=probabilities, engine="openvino")]


def _remote_runner(service: _DroppingService) -> RemoteSegmentationRunner:
    spec = ModelSpec.model_validate_json(
        (REPO_ROOT / "models" / "default" / "model_spec.json").read_text()
    )
    return remote_for(service, spec)


def test_a_connection_closed_before_the_body_is_retried_once() -> None:
    service = _DroppingService(RuntimeError("Connection closed."))
    prediction = _remote_runner(service).predict(
        np.zeros((4, 3, 4, 5), np.float32), mirror_tta=False
    )
    assert service.calls == 2
    assert prediction.probabilities.shape == (4, 3, 4, 5)


def test_a_connection_that_stays_closed_is_a_503_error_not_a_crash() -> None:
    service = _DroppingService(RuntimeError("Connection closed."), failures=2)
    with pytest.raises(RunnerUnavailableError, match="cannot be reached"):
        _remote_runner(service).predict(np.zeros((4, 3, 4, 5), np.float32), mirror_tta=False)
    assert service.calls == 2


def test_a_runner_failure_is_not_mistaken_for_a_dropped_connection() -> None:
    service = _DroppingService(RuntimeError("CUDA out of memory"))
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        _remote_runner(service).predict(np.zeros((4, 3, 4, 5), np.float32), mirror_tta=False)
    assert service.calls == 1


def test_a_runner_url_needs_the_token_and_the_remote_runner() -> None:
    with pytest.raises(ValidationError, match="runner_token"):
        BatchingSettings(runner_url="http://runner:3000")
    with pytest.raises(ValidationError, match="remote_runner is false"):
        BatchingSettings(runner_url="http://runner:3000", runner_token=TOKEN, remote_runner=False)
    with pytest.raises(ValidationError, match="runner_url"):
        BatchingSettings(runner_url="runner:3000", runner_token=TOKEN)
    with pytest.raises(ValidationError, match="at least 32"):
        BatchingSettings(runner_url="http://runner:3000", runner_token="short")
    assert "runner-token" not in json.dumps(
        Settings(batching={"runner_url": "http://r:3000", "runner_token": TOKEN}).masked()
    )


def test_the_runner_deployed_alone_refuses_to_start_without_a_token() -> None:
    with pytest.raises(ValueError, match="runner_token"):
        build_runner_service(Settings(), standalone=True)


# --- two processes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(
    registered_default_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path, RunningServer]]:
    """(runner URL, front URL, runner log, runner) of a runner service and a front serving
    apart; the module's last test stops the runner."""
    folder = tmp_path_factory.mktemp("runner-split")
    shared = {"CEREBRASCAN_DATA_DIR": str(SESSION_DATA_DIR), "CEREBRASCAN_GRPC__PORT": "0"}
    runner_env = {**shared, "CEREBRASCAN_BATCHING__RUNNER_TOKEN": TOKEN}
    with bentoml_server(
        runner_env, folder / "runner.log", ready_timeout_s=300, target="runner:CerebraScanRunner"
    ) as runner:
        front_env = {
            **shared,
            "CEREBRASCAN_BATCHING__RUNNER_URL": runner.url,
            "CEREBRASCAN_BATCHING__RUNNER_TOKEN": TOKEN,
        }
        with bentoml_server(front_env, folder / "front.log", ready_timeout_s=300) as front:
            yield runner.url, front.url, runner.log_path, runner


@pytest.mark.e2e
@pytest.mark.slow
def test_a_study_posted_to_the_front_is_segmented_by_the_remote_runner(
    split: tuple[str, str, Path, RunningServer], phantom_case: Path, phantom_truth: dict
) -> None:
    _, front_url, runner_log, _ = split
    files = {
        m: (f"{m}.nii.gz", modality_path(phantom_case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }
    response = httpx.post(
        f"{front_url}/analyze",
        files=files,
        headers={"X-Request-ID": "split-study-1"},
        timeout=900,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"]["runner"] == "onnxruntime (runner service)"
    truth_wt = phantom_truth["volumes_ml"]["WT"]
    assert abs(answer["volumes_ml"]["WT"] - truth_wt) / truth_wt < 0.1
    # the case was segmented in the other process, under the front's request id
    lines = [json.loads(line) for line in runner_log.read_text().splitlines() if line[:1] == "{"]
    assert any(
        line.get("request_id") == "split-study-1" and "segmented" in line.get("message", "")
        for line in lines
    ), runner_log.read_text()[-3000:]


@pytest.mark.e2e
@pytest.mark.slow
def test_the_runner_answers_only_its_front(split: tuple[str, str, Path, RunningServer]) -> None:
    runner_url, _, _, _ = split
    for probe in ("/readyz", "/livez", "/metrics"):
        assert httpx.get(f"{runner_url}{probe}", timeout=30).status_code == 200, probe
    no_token = httpx.post(f"{runner_url}/describe", json={}, timeout=30)
    assert no_token.status_code == 401 and no_token.json() == {"error": "missing runner token"}
    wrong = httpx.post(
        f"{runner_url}/describe", json={}, headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid runner token"}
    good = httpx.post(
        f"{runner_url}/describe",
        json={},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert good.status_code == 200 and good.json()["engine"] == "onnxruntime"
    # even with the token, the network never sends it a pickle
    pickled = httpx.post(
        f"{runner_url}/segment",
        content=b"\x80\x05N.",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/vnd.bentoml+pickle",
        },
        timeout=30,
    )
    assert pickled.status_code == 415, pickled.text


# --- the manifests -------------------------------------------------------------------------


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, document)
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifests_validate_against_the_kubernetes_schemas(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_broken_manifest() -> None:
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    broken["spec"] = {"replicas": "two", "selector": {}, "template": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_manifests_split_front_and_runner_as_documented() -> None:
    documents = _documents()
    deployments = {d["metadata"]["name"]: d for _, d in documents if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for _, d in documents if d["kind"] == "Service"}
    runner = deployments["cerebrascan-runner"]["spec"]["template"]["spec"]
    front = deployments["cerebrascan-front"]["spec"]["template"]["spec"]
    (runner_container,) = runner["containers"]
    (front_container,) = front["containers"]
    # runner on GPU nodes with a GPU; front kept off them, without one
    assert runner["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert runner_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(front_container["resources"])
    terms = front["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0] == {
        "key": "nvidia.com/gpu.present",
        "operator": "DoesNotExist",
    }
    assert "runner:CerebraScanRunner" in runner_container["command"]
    # probes and resource requests on both
    for container in (runner_container, front_container):
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    # the front points at the runner's Service, both read the token from one Secret
    front_env = {e["name"]: e for e in front_container["env"]}
    runner_env = {e["name"]: e for e in runner_container["env"]}
    service = services["cerebrascan-runner"]
    port = service["spec"]["ports"][0]["port"]
    assert front_env["CEREBRASCAN_BATCHING__RUNNER_URL"]["value"] == (
        f"http://cerebrascan-runner:{port}"
    )
    assert (
        service["spec"]["selector"]
        == deployments["cerebrascan-runner"]["spec"]["selector"]["matchLabels"]
    )
    token_source = front_env["CEREBRASCAN_BATCHING__RUNNER_TOKEN"]["valueFrom"]
    assert token_source == runner_env["CEREBRASCAN_BATCHING__RUNNER_TOKEN"]["valueFrom"]
    # every variable the manifests set is a setting the server reads
    from cerebrascan.docs_reference import setting_rows

    known = {row.env for row in setting_rows()} | {"CEREBRASCAN_CONFIG"}
    for name in {**front_env, **runner_env}:
        assert name in known, name


@pytest.mark.e2e
@pytest.mark.slow
def test_a_front_whose_runner_is_gone_answers_503_and_names_it(
    split: tuple[str, str, Path, RunningServer], phantom_case: Path
) -> None:
    """Last in the module: it stops the runner. The study is refused with a 503 (retry), not a
    500, the front's log names the cause, and the front itself stays up. (BentoML replaces
    the body of any 5xx with its generic text, so the message is in the log.)"""
    _, front_url, runner_log, runner = split
    front_log_path = runner_log.with_name("front.log")
    runner.process.terminate()
    runner.process.wait(timeout=60)
    files = {
        m: (f"{m}.nii.gz", modality_path(phantom_case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }
    response = httpx.post(f"{front_url}/analyze", files=files, timeout=300)
    assert response.status_code == 503, response.text
    front_log = front_log_path.read_text(errors="replace")
    assert "runner service cannot be reached" in front_log, front_log[-3000:]
    assert httpx.get(f"{front_url}/livez", timeout=30).status_code == 200
