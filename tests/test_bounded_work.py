"""Bounded work (issue 18, item 6): the whole-request deadline handed down to the analyzers, one
count of analyses shared by HTTP ``/analyze`` and gRPC ``ModelInfer``, and the per-request
memory budget from the declared NIfTI headers.

The analysis slots are taken by the test itself (``AnalysisLimiter.slot``, the same object the
service and the gRPC server hold), so "the limit is full" is a state, not a race between
requests. The HTTP checks use the session's ASGI app; the gRPC check a real OIP server on a
free port with the service's limiter.
"""

from __future__ import annotations

import gzip
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cerebrascan.errors import InputError
from cerebrascan.pipeline import AnalysisPipeline
from cerebrascan.registry import resolve_model
from cerebrascan.serving.grpc.server import start_oip_server
from cerebrascan.serving.limits import AnalysisLimiter, ServerBusyError, check_declared_memory
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import free_port
from plugins.testing import MemoryArtefactSink
from plugins.testing import study_inputs as plugin_study_inputs
from tests.test_plugin_host import Number, _labels, analyzer, make_host

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


# --- the request deadline -------------------------------------------------------------------


def test_a_hung_analyzer_is_cut_at_the_request_deadline_and_later_ones_are_skipped() -> None:
    """Own limit 30 s, deadline 0.3 s from now: the hung analyzer times out at the deadline,
    the one before it reports, the one after it is skipped with the reason, and the hung
    thread's late artefact write is refused."""
    release = threading.Event()
    attempted = threading.Event()
    late_write: dict[str, BaseException | None] = {}

    def hang(context) -> Number:
        release.wait(10)
        try:
            context.artefacts.write_nifti(
                "late_map", np.zeros((24, 24, 24), np.uint8), description="after the deadline"
            )
            late_write["error"] = None
        except RuntimeError as exc:
            late_write["error"] = exc
        attempted.set()
        return Number(value=0.0)

    host = make_host(
        analyzer("quick", lambda c: Number(value=1.0)),
        analyzer("hangs", hang, timeout_s=30.0),
        analyzer("later", lambda c: Number(value=2.0)),
    )
    sink = MemoryArtefactSink()
    clock = time.monotonic()
    try:
        outcomes = host.run(
            plugin_study_inputs(_labels()), artefacts=sink, deadline=time.monotonic() + 0.3
        )
        elapsed = time.monotonic() - clock
    finally:
        release.set()
    assert outcomes["quick"].status == "ok"
    assert outcomes["quick"].result == {"value": 1.0}
    assert outcomes["hangs"].status == "error"
    assert "the request's deadline; its own limit is 30 s" in (outcomes["hangs"].error or "")
    assert outcomes["later"].status == "skipped"
    assert outcomes["later"].error == "the request's deadline passed before it could start"
    assert elapsed < 5  # cut at the deadline, not at the analyzer's own 30 s
    assert attempted.wait(10)  # the released thread has tried its write
    assert isinstance(late_write.get("error"), RuntimeError)
    assert "late_map" not in sink.arrays


def test_without_a_deadline_own_limits_hold() -> None:
    host = make_host(analyzer("quick", lambda c: Number(value=1.0)))
    outcomes = host.run(plugin_study_inputs(_labels()), artefacts=MemoryArtefactSink())
    assert outcomes["quick"].status == "ok"


# --- one analysis limit for HTTP and gRPC ---------------------------------------------------


def test_the_limiter_refuses_beyond_its_slots_and_frees_them() -> None:
    limiter = AnalysisLimiter(2, queue_wait_s=0.0)
    with limiter.slot("a"), limiter.slot("b"):
        assert limiter.running == 2
        with pytest.raises(ServerBusyError) as refused:
            with limiter.slot("c"):
                pass
        assert refused.value.status_code == 429
        assert "2 analyses are running" in str(refused.value)
    assert limiter.running == 0
    with limiter.slot("d"):  # free again
        assert limiter.running == 1


def test_a_waiting_request_gets_a_slot_freed_within_its_wait() -> None:
    limiter = AnalysisLimiter(1, queue_wait_s=5.0)
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with limiter.slot("holder"):
            entered.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(5)
    release.set()  # the holder leaves; the waiter below gets its slot
    with limiter.slot("waiter"):
        assert limiter.running == 1
    holder.join(5)


def _case_files(case: Path) -> dict[str, tuple[str, bytes, str]]:
    from cerebrascan.inputs.case_folder import modality_path

    return {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }


def test_http_and_grpc_share_one_analysis_limit(asgi_client, phantom_case: Path) -> None:
    """With every slot of the service's limiter taken, POST /analyze answers 429 and a gRPC
    server given that limiter answers RESOURCE_EXHAUSTED, both naming the limit."""
    import service

    limiter = service.ANALYSIS_LIMITER
    settings = Settings()
    light = AnalysisPipeline(settings, resolve_model(settings), host=make_host())
    port = free_port()
    server = start_oip_server(
        Settings(grpc={"port": port, "host": "127.0.0.1"}), lambda: light, limiter=limiter
    )
    assert server is not None
    data = np.random.default_rng(7).uniform(1, 2, size=(1, 4, 8, 8, 8)).astype(np.float32)
    tensor = grpcclient.InferInput("IMAGE", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    try:
        with ExitStack() as slots:
            for index in range(limiter.max_concurrent):
                slots.enter_context(limiter.slot(f"test holder {index}"))
            refused = asgi_client.post("/analyze", files=_case_files(phantom_case))
            with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
                with pytest.raises(InferenceServerException) as grpc_refused:
                    client.infer(
                        "cerebrascan-segmentation",
                        [tensor],
                        parameters={"spacing": "[1, 1, 1]"},
                        client_timeout=60,
                    )
    finally:
        server.stop(grace=1).wait()
    assert refused.status_code == 429, refused.text
    assert "bounds.max_concurrent_analyses" in refused.text
    assert grpc_refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "analyses are running" in grpc_refused.value.message()
    assert limiter.running == 0


# --- the per-request memory budget ----------------------------------------------------------


def _declaring(tmp_path: Path, name: str, shape: tuple[int, ...], dtype: str) -> Path:
    """A gzip NIfTI whose header declares ``shape`` x ``dtype`` but holds one slice only: the
    budget must be decided from the header, before any voxel is read."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header.set_zooms((1.0, 1.0, 1.0))
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + np.zeros(shape[:2], dtype).tobytes()
    path = tmp_path / f"{name}.nii.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return path


def test_the_budget_counts_declared_voxels_bytes_and_contrasts(tmp_path: Path) -> None:
    small = {m: _declaring(tmp_path, m, (100, 100, 100), "int16") for m in MODALITIES}
    # 1e6 voxels x 4 B (float32 once decoded) x 4 contrasts
    assert check_declared_memory(small, max_mb=1024) == 16_000_000
    big = {m: _declaring(tmp_path, m + "_big", (400, 400, 400), "float64") for m in MODALITIES}
    with pytest.raises(InputError) as refused:
        check_declared_memory(big, max_mb=1024)
    assert refused.value.status_code == 413
    message = str(refused.value)
    assert "t1n 400x400x400 x 8 B" in message and "1953 MiB" in message and "1024 MiB" in message


def test_an_unreadable_header_is_left_to_the_decoder(tmp_path: Path) -> None:
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti at all")
    assert check_declared_memory({"t1n": junk}, max_mb=1) == 0


def test_a_request_over_the_budget_is_a_413_naming_the_sizes(asgi_client, tmp_path: Path) -> None:
    """Each header declares 400^3 float64 (within limits.max_voxels), together ~1.9 GiB
    decoded: refused from the headers, never decoded (the data is one slice)."""
    files = {
        m: (f"{m}.nii.gz", _declaring(tmp_path, m, (400, 400, 400), "float64").read_bytes())
        for m in MODALITIES
    }
    response = asgi_client.post("/analyze", files=files)
    assert response.status_code == 413, response.text
    assert "t2f 400x400x400 x 8 B" in response.text
    assert "bounds.max_request_memory_mb" in response.text
