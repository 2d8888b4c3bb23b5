"""A throw-away Orthanc PACS for the tests: Debian's ``Orthanc`` with the DICOMweb plugin.

Never the system service: the server runs from its own JSON configuration in a temporary
folder (storage and index there), on free loopback ports for HTTP and DICOM, with HTTP basic
authentication on, and is stopped and deleted at the end. ``make orthanc`` installs the Debian
packages ``orthanc`` and ``orthanc-dicomweb`` when run as root.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cerebrascan.testing.server_process import free_port

logger = logging.getLogger(__name__)

BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
PLUGIN_PATTERNS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)
AE_TITLE = "ORTHANC"
USER, PASSWORD = "cerebrascan", "orthanc-test-password"
START_TIMEOUT_S = 60.0


class OrthancUnavailableError(RuntimeError):
    """The Orthanc binary or its DICOMweb plugin is missing."""


@dataclass
class RunningOrthanc:
    """A started Orthanc: REST at ``url`` (basic auth ``auth``), DICOM at ``dicom_port``."""

    url: str
    dicom_port: int
    aet: str
    auth: tuple[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def client(self) -> httpx.Client:
        """An HTTP client on the REST API (close it, or use it in a ``with``)."""
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=60.0)


def find_binary() -> Path:
    """The ``Orthanc`` executable.

    Raises:
        OrthancUnavailableError: not installed.
    """
    for candidate in (shutil.which("Orthanc"), *BINARY_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise OrthancUnavailableError(
        "Orthanc not found (/usr/sbin/Orthanc or PATH): run `make orthanc` as root "
        "(Debian: apt-get install orthanc orthanc-dicomweb)"
    )


def find_dicomweb_plugin() -> Path:
    """The DICOMweb plugin's shared library.

    Raises:
        OrthancUnavailableError: not installed.
    """
    for pattern in PLUGIN_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise OrthancUnavailableError(
        "Orthanc's DICOMweb plugin (libOrthancDicomWeb.so) not found: run `make orthanc` as "
        "root (Debian: apt-get install orthanc-dicomweb)"
    )


def _wait_until_answering(orthanc: RunningOrthanc) -> None:
    """Poll ``/system`` until it answers 200 (or the process exits, or the time is up)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with orthanc.client() as client:
        while time.monotonic() < deadline:
            if orthanc.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {orthanc.process.returncode}: "
                    f"{orthanc.log_path.read_text()[-2000:]}"
                )
            try:
                if client.get("/system").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # a readiness poll, not synchronisation: /system decides
    raise TimeoutError(f"Orthanc did not answer within {START_TIMEOUT_S} s")


@contextmanager
def orthanc_server() -> Iterator[RunningOrthanc]:
    """Start a private Orthanc with the DICOMweb plugin; stop and delete it afterwards.

    Raises:
        OrthancUnavailableError: the binary or the plugin is missing.
    """
    binary, plugin = find_binary(), find_dicomweb_plugin()
    root = Path(tempfile.mkdtemp(prefix="cerebrascan-orthanc-"))
    http_port = free_port()
    dicom_port = free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = {
        "Name": "cerebrascan-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AE_TITLE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomModalities": {},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False,
        "StorageCompression": False,
    }
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = root / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            # DCMTK (Orthanc's DICOM stack) reads this: no Nagle delay on its DICOM sockets
            env={**os.environ, "TCP_NODELAY": "1"},
        )
    orthanc = RunningOrthanc(
        url=f"http://127.0.0.1:{http_port}",
        dicom_port=dicom_port,
        aet=AE_TITLE,
        auth=(USER, PASSWORD),
        process=process,
        log_path=log_path,
    )
    try:
        _wait_until_answering(orthanc)
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
