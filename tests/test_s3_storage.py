"""DVC and MLflow on S3 against a real S3 API on loopback (moto server, IAM enforced).

The users act under the IAM policies shipped in docs/iam/: the admin pushes DVC data, a GPU
machine's read-only user pulls it and cannot push; MLflow registers a model with its artefacts
on S3 and a read-only serving user resolves it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cerebrascan.settings import Settings, StorageSettings
from tests.conftest import REPO_ROOT
from tests.s3_server import AwsUser, MotoS3Server, moto_s3_server

pytestmark = pytest.mark.slow

BUCKET = "cerebrascan-data"  # the bucket the shipped policies name
IAM_DIR = REPO_ROOT / "docs" / "iam"
DVC = Path(sys.executable).with_name("dvc")
CEREBRASCAN = Path(sys.executable).with_name("cerebrascan")


@dataclass
class S3World:
    server: MotoS3Server
    dvc_admin: AwsUser
    dvc_reader: AwsUser
    mlflow_writer: AwsUser
    mlflow_reader: AwsUser

    def storage_env(self) -> dict[str, str]:
        return {
            "CEREBRASCAN_STORAGE__S3_ENDPOINT_URL": self.server.endpoint_url,
            "CEREBRASCAN_STORAGE__DVC_REMOTE_URL": f"s3://{BUCKET}/dvc",
        }


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3World]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_s3_server(log) as server:
        server.client().create_bucket(Bucket=BUCKET)
        world = S3World(
            server=server,
            dvc_admin=server.create_user("dvc-admin", IAM_DIR / "dvc-admin.json"),
            dvc_reader=server.create_user("gpu-node", IAM_DIR / "dvc-readonly.json"),
            mlflow_writer=server.create_user("mlflow", IAM_DIR / "mlflow-artifacts-readwrite.json"),
            mlflow_reader=server.create_user("serving", IAM_DIR / "mlflow-artifacts-readonly.json"),
        )
        server.enforce_iam()
        yield world


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CEREBRASCAN_"))}
    return subprocess.run(
        command,
        cwd=cwd,
        env={**clean, "DVC_NO_ANALYTICS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _write_dataset(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    files = {
        "scans/case-001.bin": rng.bytes(300_000),
        "scans/case-002.bin": rng.bytes(1000),
        "labels.csv": b"case,label\ncase-001,1\ncase-002,0\n",
    }
    for name, payload in files.items():
        (folder / "dataset" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "dataset" / name).write_bytes(payload)
    return files


def test_dvc_push_by_admin_then_read_only_pull(s3: S3World, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    _ok(_run([str(DVC), "init", "--no-scm"], origin, {}))
    files = _write_dataset(origin)
    _ok(_run([str(DVC), "add", "dataset"], origin, {}))
    # the remote comes from the storage settings, through the CLI
    _ok(
        _run(
            [str(CEREBRASCAN), "storage", "configure-dvc", "--repo", "."], origin, s3.storage_env()
        )
    )
    config = (origin / ".dvc" / "config").read_text()
    assert f"s3://{BUCKET}/dvc" in config and s3.server.endpoint_url in config
    assert "secret" not in config.lower() and s3.dvc_admin.access_key_id not in config

    _ok(_run([str(DVC), "push"], origin, s3.dvc_admin.environment()))
    stored = s3.server.client(user=s3.dvc_admin).list_objects_v2(Bucket=BUCKET, Prefix="dvc/")
    assert stored["KeyCount"] >= len(files)

    # a clone: the committed .dvc/config and dataset.dvc, no cache, no data
    clone = tmp_path / "clone"
    (clone / ".dvc").mkdir(parents=True)
    shutil.copy(origin / ".dvc" / "config", clone / ".dvc" / "config")
    shutil.copy(origin / "dataset.dvc", clone / "dataset.dvc")
    _ok(_run([str(DVC), "pull"], clone, s3.dvc_reader.environment()))
    for name, payload in files.items():
        assert (clone / "dataset" / name).read_bytes() == payload, name

    # the GPU machine's read-only key cannot change the remote
    (clone / "dataset" / "labels.csv").write_bytes(b"case,label\ncase-001,0\n")
    _ok(_run([str(DVC), "add", "dataset"], clone, {}))
    denied = _run([str(DVC), "push"], clone, s3.dvc_reader.environment())
    assert denied.returncode != 0
    assert "403" in denied.stderr or "AccessDenied" in denied.stderr, denied.stderr


def test_dvc_read_only_key_sees_no_other_prefix(s3: S3World) -> None:
    client = s3.server.client(user=s3.dvc_reader)
    with pytest.raises(client.exceptions.ClientError, match=r"AccessDenied|403"):
        client.put_object(Bucket=BUCKET, Key="mlflow/intruder.txt", Body=b"x")


def test_mlflow_artefacts_round_trip_on_s3(
    s3: S3World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cerebrascan.registry import (
        REGISTRATION_EXPERIMENT,
        client_for,
        register_model_folder,
        resolve_model,
    )
    from runners.engine_cache import file_digest

    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    for name, value in s3.mlflow_writer.environment().items():
        monkeypatch.setenv(name, value)
    storage = StorageSettings(
        s3_endpoint_url=s3.server.endpoint_url, mlflow_artifact_root=f"s3://{BUCKET}/mlflow"
    )
    settings = Settings(data_dir=tmp_path / "data", model_name="s3-model", storage=storage)
    version = register_model_folder(
        settings, settings.bundled_model_dir, name="s3-model", alias="champion"
    )
    experiment = client_for(settings).get_experiment_by_name(REGISTRATION_EXPERIMENT)
    assert experiment.artifact_location == f"s3://{BUCKET}/mlflow/{REGISTRATION_EXPERIMENT}"
    keys = [
        o["Key"]
        for o in s3.server.client(user=s3.mlflow_writer).list_objects_v2(
            Bucket=BUCKET, Prefix="mlflow/"
        )["Contents"]
    ]
    assert any(k.endswith("/model/model.onnx") for k in keys), keys

    # a serving machine with the read-only key downloads the version into its own cache
    for name, value in s3.mlflow_reader.environment().items():
        monkeypatch.setenv(name, value)
    serving = Settings(data_dir=tmp_path / "data", model_name="s3-model", storage=storage)
    serving_cache = tmp_path / "data" / "model-cache"
    shutil.rmtree(serving_cache, ignore_errors=True)
    model = resolve_model(serving)
    assert model.version == version
    assert file_digest(model.onnx_path) == file_digest(settings.bundled_model_dir / "model.onnx")
    reader = s3.server.client(user=s3.mlflow_reader)
    with pytest.raises(reader.exceptions.ClientError, match=r"AccessDenied|403"):
        reader.put_object(Bucket=BUCKET, Key="mlflow/tampered.onnx", Body=b"x")


def test_storage_settings_refuse_non_s3_urls() -> None:
    with pytest.raises(ValueError, match="s3://bucket"):
        StorageSettings(dvc_remote_url="/tmp/remote")
    with pytest.raises(ValueError, match="s3://bucket"):
        StorageSettings(mlflow_artifact_root="http://bucket/mlflow")


def test_configure_dvc_without_a_remote_url_names_the_setting(tmp_path: Path) -> None:
    _ok(_run([str(DVC), "init", "--no-scm"], tmp_path, {}))
    result = _run([str(CEREBRASCAN), "storage", "configure-dvc", "--repo", "."], tmp_path, {})
    assert result.returncode != 0
    assert "storage.dvc_remote_url is not set" in result.stderr
