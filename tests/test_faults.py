"""Faults: a full disk, a server killed mid-write, analyzers that raise or hang.

- Full disk: a real process stores a study under ``RLIMIT_FSIZE`` (the kernel refuses the
  writes with EFBIG, as a full disk refuses with ENOSPC; a small tmpfs needs root): the study is
  refused with :class:`StorageFullError` (507), nothing of it stays, and the retry succeeds.
  Over HTTP the 507 and its message are checked with the disk fault injected (a test double:
  the in-process server's data folder cannot be filled).
- ``kill -9`` mid-write: a real process storing studies back to back is stopped while a study
  is being written (its folder marked), killed, and the start-up sweep then leaves the store
  consistent: every folder has its record and files, none is half-written; the retry succeeds.
- Analyzers: two installed plugins, one raising and one hanging past its timeout, on the
  in-process service: they report their errors and every other analyzer reports as without them.

Not here: the runner service killed mid-request (the session's two-service server is shared by
other tests and a runner restart takes ~40 s on this machine: ``benchmarks/fault_runner_kill.py``
measures it; ``tests/test_runner_split.py`` covers a runner that is gone) and the registry
unreachable at start (the registry's own tests).
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from cerebrascan.store.artefacts import (
    RESULT_FILE,
    SEGMENTATION_FILE,
    WRITING_MARKER_PREFIX,
    StudyArtefacts,
    sweep_interrupted_writes,
)
from tests.conftest import REPO_ROOT
from tests.nifti_faults import brain_like, nifti_bytes

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
FILE_SIZE_LIMIT = 4096
"""Bytes a file may reach under the simulated full disk: less than any study's label map."""
HANG_TIMEOUT_S = 1.0


# --- processes storing studies (tests/fault_writer.py) ---------------------------------------


@pytest.fixture(scope="module")
def writer_env(registered_default_model: str) -> dict[str, str]:
    """Environment of a writer process: the session's registry, only volumetrics."""
    from cerebrascan.settings import Settings

    return {
        **os.environ,
        "CEREBRASCAN_MLFLOW_TRACKING_URI": Settings().tracking_uri,
        "CEREBRASCAN_PLUGINS__ALLOW": '["volumetrics"]',
        "CEREBRASCAN_GRPC__PORT": "0",
    }


def _writer(data_dir: Path, *args: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.fault_writer", str(data_dir), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _repository(data_dir: Path) -> Any:
    from cerebrascan.settings import Settings
    from cerebrascan.store.records import StudyRepository

    return StudyRepository.from_settings(Settings(data_dir=data_dir))


def _assert_consistent(data_dir: Path) -> list[str]:
    """Every study folder has its record, files and no staging or marker; every record's
    files exist. Returns the stored study ids."""
    root = data_dir / "studies"
    repository = _repository(data_dir)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
    for name in folders:
        folder = root / name
        record = repository.get_study(name)
        assert record is not None, f"files without a record: {sorted(os.listdir(folder))}"
        assert (folder / SEGMENTATION_FILE).is_file() and (folder / RESULT_FILE).is_file()
        leftovers = [
            p.name
            for p in folder.iterdir()
            if p.name.startswith((WRITING_MARKER_PREFIX, ".")) or p.name.endswith(".partial")
        ]
        assert not leftovers, f"study {name} holds half-written files {leftovers}"
        for uri in record.artefacts.values():
            assert Path(unquote(urlparse(uri).path)).is_file(), f"record without its file {uri}"
    return folders


def test_a_full_disk_refuses_the_study_with_507_and_keeps_nothing(
    writer_env: dict[str, str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    outcome = _writer(data_dir, "full", "3", str(FILE_SIZE_LIMIT), env=writer_env)
    study_id = outcome["study_id"]
    assert outcome["status_code"] == 507
    assert outcome["refused"] == (
        f"study {study_id} could not be stored: the data folder has no room (File too large); "
        "nothing of it was kept; retry once space is freed"
    )
    # nothing half-written: no file of the study, no record
    assert outcome["files_after_refusal"] == []
    assert outcome["recorded_after_refusal"] is False
    # the same study again, with room: stored whole
    assert outcome["retry_study_id"] == study_id
    assert _assert_consistent(data_dir) == [study_id]


def test_kill_9_during_a_study_write_leaves_a_consistent_store_and_the_retry_succeeds(
    writer_env: dict[str, str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    studies = data_dir / "studies"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.fault_writer", str(data_dir), "loop"],
        cwd=REPO_ROOT,
        env=writer_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killed_mid_write = False
    try:
        deadline = time.monotonic() + 240
        while not killed_mid_write and time.monotonic() < deadline:
            assert writer.poll() is None, writer.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            if not any(studies.glob(f"*/{WRITING_MARKER_PREFIX}*")):
                time.sleep(0.01)
                continue
            # frozen, it cannot finish the write between the look and the kill
            writer.send_signal(signal.SIGSTOP)
            if any(studies.glob(f"*/{WRITING_MARKER_PREFIX}*")):
                writer.send_signal(signal.SIGKILL)
                killed_mid_write = True
            else:
                writer.send_signal(signal.SIGCONT)
    finally:
        if writer.poll() is None and not killed_mid_write:
            writer.kill()
        writer.wait(timeout=60)
    assert killed_mid_write, "the writer was never caught writing a study"
    assert writer.returncode == -signal.SIGKILL
    in_flight = (data_dir / "inflight").read_text()
    # what a starting server does first: sweep the writes the dead process left
    repository = _repository(data_dir)
    removed = sweep_interrupted_writes(
        StudyArtefacts(studies), lambda study_id: repository.get_study(study_id) is not None
    )
    stored = _assert_consistent(data_dir)
    assert not set(removed) & set(stored)
    # the study that was being written, posted again (here, in this process), is stored whole
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model
    from cerebrascan.settings import Settings
    from tests.fault_writer import store_one

    settings = Settings(
        data_dir=data_dir,
        mlflow_tracking_uri=writer_env["CEREBRASCAN_MLFLOW_TRACKING_URI"],
        plugins={"allow": ["volumetrics"]},
    )
    pipeline = AnalysisPipeline(settings, resolve_model(settings), with_runner=False)
    retried = store_one(pipeline, int(in_flight))
    assert retried in _assert_consistent(data_dir)


def test_the_sweep_leaves_the_writes_of_live_processes_alone(tmp_path: Path) -> None:
    """Another server on the same data folder is writing: its marked folder stays."""
    artefacts = StudyArtefacts(tmp_path / "studies")
    marker = artefacts.begin_write("a" * 32)
    assert sweep_interrupted_writes(artefacts, lambda study_id: False) == []
    assert marker.is_file()
    artefacts.end_write("a" * 32)
    assert not marker.exists()


# --- over HTTP: the in-process service --------------------------------------------------------


def _small_study_files(seed: int) -> dict[str, tuple[str, bytes, str]]:
    return {
        m: (f"{m}.nii.gz", nifti_bytes(brain_like((40, 48, 36), seed=seed + i)), "application/gzip")
        for i, m in enumerate(MODALITIES)
    }


def test_a_full_disk_answers_507_with_a_message_over_http(
    asgi_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault is a test double here (the in-process server's data folder cannot be filled);
    the real EFBIG is the first test's."""
    from cerebrascan.settings import Settings
    from cerebrascan.store.artefacts import StudyArtefacts as Artefacts

    def disk_full(self: Artefacts, study_id: str, *args: Any, **kwargs: Any) -> None:
        self.folder(study_id).mkdir(parents=True, exist_ok=True)
        (self.folder(study_id) / ".segmentation.nii.gz.partial.nii.gz").write_bytes(b"\x1f\x8b")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    studies = Settings().studies_dir
    before = set(os.listdir(studies)) if studies.exists() else set()
    monkeypatch.setattr(Artefacts, "save", disk_full)
    response = asgi_client.post("/analyze", files=_small_study_files(seed=50))
    assert response.status_code == 507, response.text
    assert "data folder is full" in response.json()["error"]
    assert "nothing of it was kept" in response.json()["error"]
    after = set(os.listdir(studies)) if studies.exists() else set()
    assert after <= before, f"left behind: {after - before}"


FAULT_PLUGIN = textwrap.dedent(
    f'''
    import threading

    from pydantic import BaseModel
    from plugins.analyzer import Analyzer
    from plugins.hookspecs import hookimpl

    RELEASE = threading.Event()

    class Nothing(BaseModel):
        value: int

    class Raising(Analyzer):
        """Raises on every study."""
        name = "fault_raising"
        version = "1.0"
        result_model = Nothing
        needs = frozenset({{"segmentation"}})

        def analyze(self, context):
            raise RuntimeError("fault test: this analyzer always fails")

    class Hanging(Analyzer):
        """Never answers within its timeout."""
        name = "fault_hanging"
        version = "1.0"
        result_model = Nothing
        needs = frozenset({{"segmentation"}})
        timeout_s = {HANG_TIMEOUT_S}

        def analyze(self, context):
            RELEASE.wait(120)
            return Nothing(value=1)

    @hookimpl
    def register_analyzers():
        return [Raising(), Hanging()]
    '''
)


@contextmanager
def fault_plugins_installed(folder: Path) -> Iterator[Any]:
    """The two faulty analyzers installed as an entry-point plugin in the in-process service;
    removed (and the hanging one released) afterwards."""
    import service

    (folder / "cs_fault_plugins.py").write_text(FAULT_PLUGIN)
    dist_info = folder / "cs_fault_plugins-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cs-fault-plugins\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[cerebrascan]\nfaults = cs_fault_plugins\n")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        service.HOST.reload()
        yield sys.modules["cs_fault_plugins"]
    finally:
        module = sys.modules.pop("cs_fault_plugins", None)
        if module is not None:
            module.RELEASE.set()
        sys.path.remove(str(folder))
        importlib.invalidate_caches()
        service.HOST.reload()


def test_a_raising_and_a_hanging_analyzer_leave_every_other_analyzer_reporting(
    asgi_client: Any, tmp_path: Path
) -> None:
    faulty = {"fault_raising", "fault_hanging"}
    without = asgi_client.post("/analyze", files=_small_study_files(seed=60))
    assert without.status_code == 200, without.text
    baseline = without.json()["analyzers"]
    assert len(baseline) >= 3 and not faulty & set(baseline)
    with fault_plugins_installed(tmp_path):
        with_faults = asgi_client.post("/analyze", files=_small_study_files(seed=60))
    assert with_faults.status_code == 200, with_faults.text
    outcomes = with_faults.json()["analyzers"]
    assert outcomes["fault_raising"]["status"] == "error"
    assert outcomes["fault_raising"]["error"] == (
        "RuntimeError: fault test: this analyzer always fails"
    )
    assert outcomes["fault_hanging"]["status"] == "error"
    assert outcomes["fault_hanging"]["error"] == f"timed out after {HANG_TIMEOUT_S:g} s"
    # every other analyzer reports as it does for the same study without them
    assert set(outcomes) - faulty == set(baseline)
    for name, outcome in baseline.items():
        assert outcomes[name]["status"] == outcome["status"], (name, outcomes[name], outcome)
        assert (outcomes[name]["result"] is None) == (outcome["result"] is None), name
