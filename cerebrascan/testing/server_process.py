"""Start and stop a real ``bentoml serve`` process on a free loopback port."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A started server: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def bentoml_server(
    env: Mapping[str, str],
    log_path: Path,
    ready_timeout_s: float = 180.0,
    target: str = "service:CerebraScan",
) -> Iterator[RunningServer]:
    """Run ``bentoml serve service:CerebraScan`` (or ``target``) until the block exits.

    Args:
        env: extra environment (settings) for the server.
        log_path: where the server's stdout/stderr go.
        ready_timeout_s: how long to wait for ``/readyz``.
        target: the service to serve (``runner:CerebraScanRunner``: the runner service alone).

    Raises:
        RuntimeError: the server exited or was not ready in time (the log tail is included).
    """
    port = free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [
        str(bentoml),
        "serve",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = log_path.open("wb")
    # A private BENTOML_HOME: every `bentoml serve` empties its Prometheus multiprocess folder,
    # which would wipe /metrics of another server started by the same user.
    private = {"BENTOML_HOME": str(log_path.parent / f"bentoml-home-{port}")}
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **private, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, f"{url}/readyz", log_path, timeout_s=ready_timeout_s)
        yield RunningServer(url=url, process=process, log_path=log_path)
    finally:
        stop_process(process, timeout_s=30)
        log.close()


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Terminate ``process``; kill it if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_ready(
    process: subprocess.Popen[bytes],
    probe_url: str,
    log_path: Path,
    *,
    timeout_s: float,
    what: str = "server",
    interval_s: float = 0.5,
) -> None:
    """Poll ``probe_url`` until it answers 200.

    Raises:
        RuntimeError: the process exited or did not answer within ``timeout_s`` (the message
            holds the tail of its log).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(probe_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready in {timeout_s} s:\n{_tail(log_path)}")
        time.sleep(interval_s)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
