"""Safe defaults (issue 18, item 3): gRPC on loopback and over TLS, no open server on the
network, admin routes JSON only, CORS closed.

The TLS tests start real gRPC servers in process with certificates made here (a CA, a server
and a client certificate, with ``cryptography``); the refusal to start is checked on the
function and once on a real ``bentoml serve``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from cerebrascan.serving.apikeys import new_key
from cerebrascan.serving.exposure import (
    OpenNetworkError,
    check_exposure,
    is_loopback,
    open_addresses,
)
from cerebrascan.serving.grpc.server import start_oip_server
from cerebrascan.serving.settings import AuthSettings, GrpcSettings
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
_, KEY_ENTRY = new_key("ops", "admin")
KEYS_ON = AuthSettings(enabled=True, api_keys=[KEY_ENTRY])


def test_defaults_are_closed() -> None:
    settings = Settings()
    assert GrpcSettings().host == "127.0.0.1"
    assert settings.grpc.tls_cert_file is None
    assert AuthSettings().public_metrics is False
    assert AuthSettings().allow_open_network is False


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("cerebrascan.example.org", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_open_server_on_the_network_is_refused() -> None:
    off = AuthSettings()
    local_grpc = GrpcSettings(port=8001)
    check_exposure(off, local_grpc, "127.0.0.1")  # a developer's machine: fine
    check_exposure(off, local_grpc, None)  # host unknown (a worker, a test client)
    with pytest.raises(OpenNetworkError, match=r"HTTP host '0\.0\.0\.0'.*ALLOW_OPEN_NETWORK"):
        check_exposure(off, local_grpc, "0.0.0.0")
    with pytest.raises(OpenNetworkError, match=r"grpc\.host '0\.0\.0\.0'"):
        check_exposure(off, GrpcSettings(port=8001, host="0.0.0.0"), "127.0.0.1")
    # gRPC off: its host does not matter
    assert open_addresses(off, GrpcSettings(port=0, host="0.0.0.0"), "127.0.0.1") == []
    # keys on, or the operator's explicit word: allowed
    check_exposure(KEYS_ON, GrpcSettings(port=8001, host="0.0.0.0"), "0.0.0.0")
    allowed = AuthSettings(allow_open_network=True)
    check_exposure(allowed, GrpcSettings(port=8001, host="0.0.0.0"), "0.0.0.0")


@pytest.mark.e2e
@pytest.mark.slow
def test_bentoml_serve_refuses_an_open_network_address(tmp_path: Path) -> None:
    bentoml = Path(sys.executable).with_name("bentoml")
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml-home"),
        "CEREBRASCAN_DATA_DIR": str(tmp_path / "data"),
        "CEREBRASCAN_AUTH__ENABLED": "false",
    }
    finished = subprocess.run(
        [
            str(bentoml),
            "serve",
            "service:CerebraScan",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert finished.returncode != 0
    assert "refusing to start" in finished.stderr + finished.stdout
    assert "HTTP host '0.0.0.0'" in finished.stderr + finished.stdout


def test_tls_files_come_together() -> None:
    with pytest.raises(ValidationError, match="set together"):
        GrpcSettings(tls_cert_file=Path("cert.pem"))
    with pytest.raises(ValidationError, match=r"needs grpc\.tls_cert_file"):
        GrpcSettings(tls_client_ca_file=Path("ca.pem"))


@dataclass
class Pki:
    """PEM files of a CA and the server and client certificates it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: bytes
    client_key: bytes
    ca_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    ca: bool = False,
    loopback: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if loopback:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", server_key, ca.subject, ca_key, loopback=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("scanner-client", client_key, ca.subject, ca_key)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(_key_pem(server_key))
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=client.public_bytes(pem),
        client_key=_key_pem(client_key),
        ca_pem=ca.public_bytes(pem),
    )


def _serve_tls(pki: Pki, *, mutual: bool) -> Iterator[str]:
    port = free_port()
    grpc_settings = {
        "port": port,
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
        **({"tls_client_ca_file": str(pki.ca)} if mutual else {}),
    }
    server = start_oip_server(Settings(grpc=grpc_settings), lambda: None)
    assert server is not None
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(grace=0).wait()


@pytest.fixture(scope="module")
def tls_address(pki: Pki) -> Iterator[str]:
    yield from _serve_tls(pki, mutual=False)


@pytest.fixture(scope="module")
def mutual_tls_address(pki: Pki) -> Iterator[str]:
    yield from _serve_tls(pki, mutual=True)


def _live(channel: grpc.Channel) -> bool:
    with channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return bool(stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live)


def test_grpc_speaks_tls_and_refuses_plaintext(tls_address: str, pki: Pki) -> None:
    trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    assert _live(grpc.secure_channel(tls_address, trusted))
    with pytest.raises(grpc.RpcError) as refused:
        _live(grpc.insecure_channel(tls_address))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(mutual_tls_address: str, pki: Pki) -> None:
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=pki.client_key,
        certificate_chain=pki.client_cert,
    )
    assert _live(grpc.secure_channel(mutual_tls_address, with_cert))
    without_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    with pytest.raises(grpc.RpcError) as refused:
        _live(grpc.secure_channel(mutual_tls_address, without_cert))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_binds_loopback_by_default() -> None:
    port = free_port()
    server = start_oip_server(Settings(grpc={"port": port}), lambda: None)
    assert server is not None
    try:
        assert _live(grpc.insecure_channel(f"127.0.0.1:{port}"))
        # nothing listens on the machine's other addresses
        import socket

        outward = socket.gethostbyname(socket.gethostname())
        if not is_loopback(outward):
            with socket.socket() as probe:
                probe.settimeout(2)
                assert probe.connect_ex((outward, port)) != 0
    finally:
        server.stop(grace=0).wait()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/models/promote", '{"version": "999999"}'),
        ("/admin/plugins/reload", "{}"),
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_admin_routes_take_json_only(
    asgi_client, path: str, body: str, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = asgi_client.post(path, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]


def test_admin_route_with_json_passes_the_check(asgi_client) -> None:
    response = asgi_client.post("/admin/models/promote", json={"version": "999999"})
    assert response.status_code == 404, response.text  # checked further: no such version


def test_cors_preflight_gets_no_allow_origin(asgi_client) -> None:
    response = asgi_client.options(
        "/admin/models/promote",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert "access-control-allow-origin" not in response.headers
    simple = asgi_client.get("/plugins", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


# --- notices from the model card (issue 18, item 5) -------------------------------------------


def test_the_http_answer_names_what_the_served_model_was_trained_on(reported_study: dict) -> None:
    model = reported_study["model"]
    notice = reported_study["notice"]
    assert notice.startswith("Research use only.")
    assert f"trained on {model['trained_on']}" in notice
    assert f"{model['name']} version {model['version']}" in notice


@pytest.fixture(scope="module")
def grpc_pipeline(registered_default_model: str) -> object:
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model

    settings = Settings()
    return AnalysisPipeline(settings, resolve_model(settings))


def test_every_grpc_answer_carries_the_served_models_notice(grpc_pipeline: object) -> None:
    from cerebrascan.serving.grpc.server import NOTICE_HEADER

    port = free_port()
    _, reader_entry = new_key("notice-reader", "reader")
    auth = {"enabled": True, "api_keys": [reader_entry.model_dump()]}
    server = start_oip_server(Settings(grpc={"port": port}, auth=auth), lambda: grpc_pipeline)
    assert server is not None
    model = grpc_pipeline.serving[0]  # type: ignore[attr-defined]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            _, call = stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), timeout=10)
            answered = dict(call.trailing_metadata())
            with pytest.raises(grpc.RpcError) as refused:  # no key: refused, still noticed
                stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=10)
            refusal = dict(refused.value.trailing_metadata())
    finally:
        server.stop(grace=0).wait()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for trailing in (answered, refusal):
        notice = trailing[NOTICE_HEADER]
        assert f"trained on {model.training_data}" in notice
        assert f"{model.name} version {model.version}" in notice
