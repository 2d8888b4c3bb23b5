"""One real ``bentoml serve`` with API keys, JSON logs and short job retention, shared by the
access-control, async-job and log tests (one server start instead of three).

It has its own data folder (registry, studies), so promoting a model there does not move the
alias the rest of the session serves.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.registry import ensure_default_model, register_model_folder
from cerebrascan.serving.apikeys import new_key
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import RunningServer, bentoml_server

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
# The retention the server runs with: short, so the expiry test need not wait long.
JOB_RETENTION_S = 3
PATIENT_ID_KEY = "secured-server-test-key-0123456789"


@dataclass
class SecuredServer:
    """The running server, its keys and registry versions."""

    server: RunningServer
    data_dir: Path
    reader_key: str
    admin_key: str
    first_version: str
    second_version: str

    @property
    def url(self) -> str:
        """Base URL."""
        return self.server.url

    def reader(self) -> dict[str, str]:
        """Headers with the reader key."""
        return {"Authorization": f"Bearer {self.reader_key}"}

    def admin(self) -> dict[str, str]:
        """Headers with the admin key (the other header form)."""
        return {"X-API-Key": self.admin_key}


def case_files(case: Path, prefix: str = "") -> dict[str, tuple[str, bytes, str]]:
    """Multipart files of a phantom case; ``prefix`` goes in front of each file name."""
    return {
        m: (f"{prefix}{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }


@contextmanager
def secured_server(root: Path) -> Iterator[SecuredServer]:
    """Register the bundled model twice (versions 1 and 2) and start the server on version 1."""
    data_dir = root / "data"
    settings = Settings(data_dir=data_dir)
    first = ensure_default_model(settings)
    second = register_model_folder(
        settings, settings.bundled_model_dir, name=settings.model_name, alias="challenger"
    )
    reader_key, reader_entry = new_key("test-reader", "reader")
    admin_key, admin_entry = new_key("test-admin", "admin")
    env = {
        "CEREBRASCAN_DATA_DIR": str(data_dir),
        "CEREBRASCAN_AUTH__ENABLED": "true",
        "CEREBRASCAN_AUTH__API_KEYS": json.dumps(
            [reader_entry.model_dump(), admin_entry.model_dump()]
        ),
        "CEREBRASCAN_JOBS__RESULT_RETENTION_S": str(JOB_RETENTION_S),
        "CEREBRASCAN_LOGGING__FORMAT": "json",
        "CEREBRASCAN_PATIENT_ID_KEY": PATIENT_ID_KEY,
        # the default two-service design: a promotion must reach the runner service too
        "CEREBRASCAN_BATCHING__REMOTE_RUNNER": "true",
        # a private task store: BentoML empties it at start-up
        "BENTOML_RESULT_STORE": str(root / "task_result.db"),
    }
    with bentoml_server(env, root / "bentoml.log") as running:
        yield SecuredServer(
            server=running,
            data_dir=data_dir,
            reader_key=reader_key,
            admin_key=admin_key,
            first_version=first,
            second_version=second,
        )


def wait_until_in_flight(
    url: str, version: str, headers: dict[str, str], timeout_s: float = 120
) -> None:
    """Poll ``/metrics`` until a study is in flight on model ``version``: the study has read
    its model (a submitted job may sit queued before it starts)."""
    pattern = re.compile(
        r'^cerebrascan_studies_in_flight\{[^}]*version="' + re.escape(version) + r'"[^}]*\} (\S+)',
        re.MULTILINE,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
        metrics.raise_for_status()
        if any(float(value) >= 1 for value in pattern.findall(metrics.text)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no study in flight on version {version} after {timeout_s} s")


def wait_for_result(
    url: str,
    task_id: str,
    headers: dict[str, str],
    timeout_s: float = 600,
    route: str = "/analyze",
) -> httpx.Response:
    """Poll ``{route}/status`` until the task has finished, then ``GET {route}/get`` it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(
            f"{url}{route}/status", params={"task_id": task_id}, headers=headers, timeout=30
        )
        status.raise_for_status()
        if status.json()["status"] != "in_progress":
            return httpx.get(
                f"{url}{route}/get", params={"task_id": task_id}, headers=headers, timeout=60
            )
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} still in progress after {timeout_s} s")
