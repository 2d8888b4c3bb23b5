"""API keys and request ids on the Open Inference Protocol gRPC server.

Real gRPC servers in process (as ``tests/test_grpc_oip.py`` starts them) with the real pipeline
and the default model; the client is ``tritonclient.grpc`` unchanged, with the key in
``headers``. The trailing metadata (request id) is read through the generated stub, which
tritonclient does not expose.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from cerebrascan.pipeline import AnalysisPipeline
from cerebrascan.registry import resolve_model
from cerebrascan.serving.apikeys import new_key
from cerebrascan.serving.grpc.auth import METHOD_ROLES, MISSING_KEY, ApiKeyInterceptor
from cerebrascan.serving.grpc.server import OipServicer, _with_request_id, start_oip_server
from cerebrascan.serving.logs import JsonFormatter, current_request_id
from cerebrascan.serving.settings import AuthSettings
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import free_port
from tests.test_grpc_oip import MODEL, parameters_for

READER_KEY, READER_ENTRY = new_key("grpc-reader", "reader")
ADMIN_KEY, ADMIN_ENTRY = new_key("grpc-admin", "admin")
READER_BEARER = {"authorization": f"Bearer {READER_KEY}"}
READER_X_API_KEY = {"x-api-key": READER_KEY}
ADMIN = {"x-api-key": ADMIN_KEY}


@pytest.fixture(scope="module")
def pipeline(registered_default_model: str) -> AnalysisPipeline:
    settings = Settings()
    return AnalysisPipeline(settings, resolve_model(settings))


def _serve(pipeline: AnalysisPipeline, auth: dict) -> Iterator[str]:
    port = free_port()
    settings = Settings(grpc={"port": port, "host": "127.0.0.1"}, auth=auth)
    server = start_oip_server(settings, lambda: pipeline)
    assert server is not None
    yield f"127.0.0.1:{port}"
    server.stop(grace=1).wait()


@pytest.fixture(scope="module")
def secured_address(pipeline: AnalysisPipeline) -> Iterator[str]:
    """A gRPC server with API keys required (a reader and an admin key)."""
    auth = {"enabled": True, "api_keys": [READER_ENTRY.model_dump(), ADMIN_ENTRY.model_dump()]}
    yield from _serve(pipeline, auth)


@pytest.fixture(scope="module")
def open_address(pipeline: AnalysisPipeline) -> Iterator[str]:
    """A gRPC server with ``auth.enabled`` false."""
    yield from _serve(pipeline, {"enabled": False})


@pytest.fixture(scope="module")
def client(secured_address: str) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(secured_address) as grpc_client:
        yield grpc_client


def tiny_case() -> tuple[np.ndarray, dict[str, str]]:
    """A 24³ four-channel image, 2 mm voxels: a valid study that segments in a moment."""
    rng = np.random.default_rng(11)
    data = rng.uniform(50, 100, size=(1, 4, 24, 24, 24)).astype(np.float32)
    return data, parameters_for(np.diag([2.0, 2.0, 2.0, 1.0]))


def call(client: grpcclient.InferenceServerClient, method: str, headers: dict | None) -> object:
    """One OIP method through tritonclient with ``headers`` as the call metadata."""
    if method == "ModelMetadata":
        return client.get_model_metadata(MODEL, headers=headers)
    if method == "ModelReady":
        return client.is_model_ready(MODEL, headers=headers)
    if method == "ServerMetadata":
        return client.get_server_metadata(headers=headers)
    if method == "ModelInfer":
        data, parameters = tiny_case()
        tensor = grpcclient.InferInput("IMAGE", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        return client.infer(
            MODEL, [tensor], parameters=parameters, headers=headers, client_timeout=300
        )
    raise AssertionError(method)


GUARDED = ["ModelMetadata", "ModelReady", "ModelInfer", "ServerMetadata"]


def test_health_is_open_without_a_key(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


@pytest.mark.parametrize("method", GUARDED)
def test_no_key_is_unauthenticated(client, method: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        call(client, method, None)
    assert error.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "missing API key" in error.value.message()


@pytest.mark.parametrize("method", GUARDED)
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-api-key": READER_KEY + "x"}, "invalid API key"),
        ({"authorization": f"Bearer {ADMIN_KEY[:-1]}"}, "invalid API key"),
        ({"authorization": f"Basic {READER_KEY}"}, MISSING_KEY),  # not a bearer token
    ],
    ids=["unknown", "truncated", "basic-scheme"],
)
def test_wrong_key_is_unauthenticated(client, method: str, headers: dict, expected: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        call(client, method, headers)
    assert error.value.status() == "StatusCode.UNAUTHENTICATED"
    assert error.value.message() == expected


@pytest.mark.parametrize(
    "headers", [READER_BEARER, READER_X_API_KEY, ADMIN], ids=["bearer", "x-api-key", "admin"]
)
def test_reader_and_admin_keys_reach_the_model(client, pipeline, headers: dict) -> None:
    assert client.is_model_ready(MODEL, headers=headers)
    metadata = client.get_model_metadata(MODEL, headers=headers, as_json=True)
    assert metadata["versions"] == [pipeline.model.version]
    assert client.get_server_metadata(headers=headers).name == "cerebrascan"


def test_reader_key_runs_an_inference(client) -> None:
    data, _ = tiny_case()
    result = call(client, "ModelInfer", READER_BEARER)
    labels = result.as_numpy("SEGMENTATION")
    assert labels.dtype == np.uint8 and labels.shape == (1, *data.shape[2:])
    (findings,) = result.as_numpy("FINDINGS")
    assert "study_id" in json.loads(findings)


def test_reader_key_on_an_admin_method_is_permission_denied(client) -> None:
    """Repository control (load/unload a model) is not a reader's: unmapped methods need
    ``admin``, as unmapped HTTP routes do. An admin key passes the check, and the method,
    which this server does not implement, answers UNIMPLEMENTED."""
    with pytest.raises(InferenceServerException) as denied:
        client.load_model(MODEL, headers=READER_X_API_KEY)
    assert denied.value.status() == "StatusCode.PERMISSION_DENIED"
    message = denied.value.message()
    assert "'grpc-reader'" in message and "'admin'" in message and "RepositoryModelLoad" in message
    assert READER_KEY not in message
    with pytest.raises(InferenceServerException) as unimplemented:
        client.load_model(MODEL, headers=ADMIN)
    assert unimplemented.value.status() == "StatusCode.UNIMPLEMENTED"


def test_method_roles_cover_every_oip_method() -> None:
    interceptor = ApiKeyInterceptor(AuthSettings())
    methods = [m for m in dir(service_pb2_grpc.GRPCInferenceServiceServicer) if m[0].isupper()]
    assert len(methods) >= 20
    roles = {m: interceptor.required_role(f"/inference.GRPCInferenceService/{m}") for m in methods}
    assert {m for m, role in roles.items() if role is None} == {"ServerLive", "ServerReady"}
    assert set(METHOD_ROLES) <= set(methods)  # no misspelt entry
    for admin_only in ("RepositoryModelLoad", "RepositoryModelUnload", "LogSettings"):
        assert roles[admin_only] == "admin"
    assert interceptor.required_role("/other.Service/ServerLive") == "admin"


def test_auth_disabled_needs_no_key(open_address: str) -> None:
    with grpcclient.InferenceServerClient(open_address) as open_client:
        assert open_client.is_model_ready(MODEL)
        assert open_client.get_model_metadata(MODEL, as_json=True)["name"] == MODEL
        result = call(open_client, "ModelInfer", None)
        assert result.as_numpy("SEGMENTATION").dtype == np.uint8


# ---- request ids ----


def json_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    """The captured records as the JsonFormatter wrote them (each in its call's thread)."""
    return [json.loads(line) for line in caplog.text.splitlines() if line.startswith("{")]


def test_request_id_comes_back_in_trailing_metadata(
    secured_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cerebrascan.serving.grpc")
    caplog.handler.setFormatter(JsonFormatter())
    with grpc.insecure_channel(secured_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call_info = stub.ServerLive.with_call(
            service_pb2.ServerLiveRequest(), metadata=[("x-request-id", "grpc-test-1")]
        )
        assert dict(call_info.trailing_metadata())["x-request-id"] == "grpc-test-1"
        _, unsafe = stub.ServerLive.with_call(
            service_pb2.ServerLiveRequest(), metadata=[("x-request-id", 'x" , "level": "ERROR')]
        )
        made = dict(unsafe.trailing_metadata())["x-request-id"]
        assert made != 'x" , "level": "ERROR' and len(made) == 32
        # a refused call carries it too, so a client can quote it
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelReady(
                service_pb2.ModelReadyRequest(name=MODEL),
                metadata=[("x-request-id", "grpc-test-2")],
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dict(refused.value.trailing_metadata())["x-request-id"] == "grpc-test-2"
    (refusal,) = [e for e in json_lines(caplog) if e["request_id"] == "grpc-test-2"]
    assert "ModelReady refused (UNAUTHENTICATED): missing API key" in refusal["message"]


def test_inference_logs_carry_the_request_id(
    client, caplog: pytest.LogCaptureFixture, pipeline
) -> None:
    """The study's log lines (written in the gRPC thread here: no service loop) carry the id
    the client sent, and the key's name (never the key) is logged at debug."""
    caplog.set_level(logging.DEBUG, logger="cerebrascan")
    caplog.handler.setFormatter(JsonFormatter())
    data, parameters = tiny_case()
    tensor = grpcclient.InferInput("IMAGE", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(
        MODEL,
        [tensor],
        parameters=parameters,
        headers={**READER_BEARER, "x-request-id": "grpc-infer-7"},
        client_timeout=300,
    )
    study_id = json.loads(result.as_numpy("FINDINGS")[0])["study_id"]
    entries = json_lines(caplog)
    mine = [e for e in entries if e["request_id"] == "grpc-infer-7"]
    assert any(study_id in e["message"] for e in mine if e["logger"] == "cerebrascan.pipeline")
    assert any(
        "'grpc-reader'" in e["message"]
        for e in mine
        if e["logger"] == "cerebrascan.serving.grpc.auth"
    )
    assert READER_KEY not in caplog.text


def test_request_id_reaches_the_service_loop_worker_thread(pipeline) -> None:
    """Under ``bentoml serve`` a study runs in an AnyIO worker thread of the service's loop,
    not in the gRPC thread that bound the id: the id must reach it (and the runner service's
    client, which runs there)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        servicer = OipServicer(
            lambda: pipeline, MODEL, loop, max_voxels=pipeline.settings.limits.max_voxels
        )
        seen = _with_request_id("loop-case-3", servicer._in_service_thread, current_request_id)
        assert seen == "loop-case-3"
        assert servicer._in_service_thread(current_request_id) is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
