"""Promotion and health that tell the truth (issue 18, item 5).

- A promotion loads the version and runs the reference tile through its engine before the
  alias moves: a version whose ONNX checksum is right but whose bytes do not load is a 409,
  the alias stays, and the next study is served by the old version (the session's ASGI app,
  whose runner service is the in-process instance of ``bentoml.depends``).
- The runner service's readiness and sticky-failure decision; the process exit of a broken
  engine, in a subprocess.
- A registry that cannot be reached at start: the last cached good version is served, and
  the answer's notice says so; the first-start download is locked, so two downloaders at
  once download once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import mlflow
import nibabel as nib
import numpy as np
import pytest
from starlette.exceptions import HTTPException

from cerebrascan import registry
from cerebrascan.inputs.case_folder import read_case
from cerebrascan.pipeline import AnalysisPipeline, build_analyzer_host
from cerebrascan.registry import (
    MODEL_FILES,
    ModelNotAvailableError,
    cached_version_folder,
    client_for,
    register_version,
    resolve_model,
)
from cerebrascan.serving.runner_service import SegmentationRunnerService
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import free_port
from runners.engine_cache import file_digest
from runners.engine_check import (
    STICKY_EXIT_CODE,
    CachedProbe,
    EngineHealth,
    check_reference_tile,
)
from runners.errors import EngineCheckError, StickyEngineError
from runners.factory import build_runner
from schemas.analysis import AnalyzeOptions

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def broken_version(registered_default_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A version of the served model whose ``model.onnx`` is a garbled protobuf registered
    with its own (correct) SHA-256, under an alias nothing serves."""
    settings = Settings()
    folder = tmp_path_factory.mktemp("broken-model")
    files = sorted(p.name for p in settings.bundled_model_dir.iterdir() if p.is_file())
    for name in files:
        shutil.copy(settings.bundled_model_dir / name, folder / name)
    good = (folder / "model.onnx").read_bytes()
    # the first 4 KiB of the real file, then bytes no protobuf parser accepts
    (folder / "model.onnx").write_bytes(good[:4096] + b"\xff" * 4096)
    return register_version(
        settings,
        folder,
        name=settings.model_name,
        alias="broken-candidate",
        files=files,
        tags={
            "onnx_sha256": file_digest(folder / "model.onnx"),
            "training_data": "nothing: a garbled file",
        },
    )


@pytest.fixture(scope="module")
def small_case(phantom_case: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120 mm cube of :func:`phantom_case` around its tumour, as a case folder: a few
    network tiles at the model's spacing, so the studies here cost seconds, not a whole head's
    tiles (a cube under 96 mm can crop below one patch, which the runner service refuses)."""
    from cerebrascan.inputs.case_folder import modality_path, read_labels

    labels = read_labels(phantom_case)
    folder = tmp_path_factory.mktemp("small-case") / phantom_case.name
    folder.mkdir()
    centre = np.argwhere(labels > 0).mean(axis=0).astype(int)
    start = np.clip(centre - 60, 0, np.array(labels.shape) - 120)
    window = tuple(slice(int(a), int(a) + 120) for a in start)
    for modality in (*MODALITIES, "seg"):
        image = nib.load(str(modality_path(phantom_case, modality)))
        cropped = image.slicer[window]
        nib.save(cropped, str(folder / f"{phantom_case.name}-{modality}.nii.gz"))
    return folder


def _case_files(case: Path) -> dict[str, tuple[str, bytes, str]]:
    from cerebrascan.inputs.case_folder import modality_path

    return {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }


def test_a_version_that_does_not_load_is_not_promoted(
    asgi_client, broken_version: str, small_case: Path
) -> None:
    settings = Settings()
    client = client_for(settings)
    before = str(client.get_model_version_by_alias(settings.model_name, "champion").version)

    response = asgi_client.post("/admin/models/promote", json={"version": broken_version})

    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "not promoted, the old one still serves" in error
    assert f"version {broken_version}" in error and "does not load" in error
    after = client.get_model_version_by_alias(settings.model_name, "champion")
    assert str(after.version) == before  # the alias never moved
    ready = asgi_client.get("/readyz")  # the old version's engine answers the reference tile
    assert ready.status_code == 200, ready.text
    analysed = asgi_client.post("/analyze", files=_case_files(small_case))
    assert analysed.status_code == 200, analysed.text
    assert analysed.json()["model"]["version"] == before


def test_the_runner_service_checks_a_version_and_reports_readiness(
    registered_default_model: str, broken_version: str
) -> None:
    """The two-service design's runner: it refuses the broken version (its engines unchanged),
    answers /readyz through the reference tile, and once its engine fails
    ``health.sticky_engine_failures`` times in a row it is not ready, with the reason."""
    settings = Settings(health={"readiness_probe_ttl_s": 0, "sticky_engine_failures": 2})
    runner = SegmentationRunnerService(settings)
    loaded = runner.describe()["loaded_versions"]

    refused = runner.check_version(settings.model_name, broken_version)
    assert refused["ok"] is False and "does not load" in refused["error"]
    assert runner.describe()["loaded_versions"] == loaded
    accepted = runner.check_version(settings.model_name, registered_default_model)
    assert accepted == {"ok": True, "error": None}

    assert runner.__is_ready__() is True
    assert runner.health.record_failure(RuntimeError("network failed on tile batch")) is False
    assert runner.__is_ready__() is True  # one failure may be transient
    assert runner.health.record_failure(RuntimeError("network failed again")) is True
    with pytest.raises(HTTPException) as not_ready:
        runner.__is_ready__()
    assert not_ready.value.status_code == 503
    assert "2 consecutive engine failures" in str(not_ready.value.detail)


def test_sticky_failures_need_consecutive_failures_or_an_unrecoverable_error() -> None:
    health = EngineHealth(max_failures=3)
    assert not health.record_failure(RuntimeError("network failed"))
    assert not health.record_failure(RuntimeError("network failed"))
    health.record_success()  # a success in between: counting starts again
    assert not health.record_failure(RuntimeError("network failed"))
    assert not health.record_failure(RuntimeError("network failed"))
    assert health.sticky_reason is None
    assert health.record_failure(RuntimeError("network failed"))
    assert "3 consecutive engine failures" in (health.sticky_reason or "")
    health.record_success()  # broken for good: a late success does not heal it
    assert health.sticky_reason is not None

    lost_gpu = EngineHealth(max_failures=3)
    assert lost_gpu.record_failure(RuntimeError("CUDA error: an illegal memory access"))
    assert "unrecoverable" in (lost_gpu.sticky_reason or "")
    assert EngineHealth(5).record_failure(StickyEngineError("context lost"))


def test_a_broken_engine_ends_its_process_with_the_restart_status() -> None:
    script = (
        "from runners.engine_check import EngineHealth, exit_if_sticky\n"
        "health = EngineHealth(2)\n"
        "health.record_failure(RuntimeError('network failed'))\n"
        "exit_if_sticky(health)\n"  # not yet: the process goes on
        "health.record_failure(RuntimeError('network failed'))\n"
        "exit_if_sticky(health)\n"
        "raise SystemExit(0)\n"
    )
    ended = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert ended.returncode == STICKY_EXIT_CODE, ended.stderr
    assert "engine broken for good" in ended.stderr


class _NaNEngine:
    """The real engine with its logits poisoned: a test double for a fault (NaN logits from
    an engine that loads) that a committed model cannot be made to produce."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.spec = engine.spec
        self.name = "nan-engine"

    def predict_tiles(self, tiles: np.ndarray) -> np.ndarray:
        logits = np.array(self.engine.predict_tiles(tiles))
        logits[0, 0, 0, 0, 0] = np.nan
        return logits


def test_the_reference_tile_check_passes_a_good_engine_and_names_bad_logits(
    registered_default_model: str,
) -> None:
    settings = Settings()
    model = resolve_model(settings)
    engine = build_runner(model.folder, model.spec, settings.runner, settings.engine_cache_dir)
    check_reference_tile(engine)  # the committed model answers
    with pytest.raises(EngineCheckError, match="1 NaN or infinite values"):
        check_reference_tile(_NaNEngine(engine))  # type: ignore[arg-type]


def test_the_readiness_probe_is_cached_for_its_ttl() -> None:
    now = [100.0]
    calls: list[float] = []

    def check() -> None:
        calls.append(now[0])
        if len(calls) > 1:
            raise EngineCheckError("engine gone")

    probe = CachedProbe(check, ttl_s=10, clock=lambda: now[0])
    assert probe().ready and probe().ready
    assert len(calls) == 1
    now[0] += 10
    answer = probe()
    assert not answer.ready and "engine gone" in (answer.reason or "")
    assert len(calls) == 2


def _dead_registry_settings(settings: Settings) -> Settings:
    """The same data folder (and model cache), the registry on a port nothing listens on."""
    return Settings(
        data_dir=settings.data_dir, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}"
    )


def test_a_start_without_the_registry_serves_the_last_good_version(
    registered_default_model: str, small_case: Path
) -> None:
    settings = Settings()
    good = resolve_model(settings)  # a start with the registry records the version as good
    assert good.registry_warning is None

    offline = _dead_registry_settings(settings)
    model = resolve_model(offline)
    assert (model.version, model.folder) == (good.version, good.folder)
    assert "could not be reached" in (model.registry_warning or "")

    pipeline = AnalysisPipeline(
        offline,
        model,
        host=build_analyzer_host(offline, builtin_plugins=("plugins.builtin.volumetrics",)),
    )
    study = read_case(small_case)
    answer = pipeline.run(study, AnalyzeOptions(mirror_tta=False)).response
    assert answer.model.version == good.version
    assert "last cached good version" in answer.notice
    assert answer.volumes_ml.WT > 0


def test_no_cached_version_and_no_registry_is_a_clear_error(tmp_path: Path) -> None:
    offline = Settings(data_dir=tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelNotAvailableError, match="holds no good version"):
        resolve_model(offline)


def test_two_downloaders_at_once_download_once(
    registered_default_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each download waits (up to 1 s) for a second one to start beside it: without the lock
    both would, with it the second waits on the lock and then finds the files."""
    session = Settings()
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri=session.tracking_uri)
    version = client_for(settings).get_model_version(settings.model_name, registered_default_model)
    real_download = mlflow.artifacts.download_artifacts
    downloads: list[str] = []
    second_started = threading.Event()

    def counting_download(**kwargs: Any) -> str:
        downloads.append(kwargs["dst_path"])
        if len(downloads) > 1:
            second_started.set()
        second_started.wait(1.0)
        return str(real_download(**kwargs))

    monkeypatch.setattr(registry.mlflow.artifacts, "download_artifacts", counting_download)
    folders: list[Path] = []
    errors: list[BaseException] = []

    def download() -> None:
        try:
            folders.append(
                cached_version_folder(
                    settings, settings.model_name, version, "model.onnx", "onnx_sha256"
                )
            )
        except Exception as exc:  # noqa: BLE001 - reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(downloads) == 1
    assert len(folders) == 2 and folders[0] == folders[1]
    assert file_digest(folders[0] / "model.onnx") == version.tags["onnx_sha256"]
    assert set(MODEL_FILES) <= {p.name for p in folders[0].iterdir()}
