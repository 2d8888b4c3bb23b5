"""The front's request id travels with each case to the runner service and into its logs.

No server: :class:`RemoteSegmentationRunner` is given the runner service's engine
(:class:`CrossCaseRunner` on the default ONNX model) as its service, as
``tests/test_cross_case_batching.py`` does; the transport between them pickles the case
unchanged. Volumes are one 64³ patch each, so a batch is a few network calls.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cerebrascan.serving.logs import JsonFormatter, bound_request_id, current_request_id
from cerebrascan.serving.runner_service import CrossCaseRunner, RemoteSegmentationRunner, RunnerCase
from runners.onnx_runner import OnnxSegmentationRunner
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec

UNSAFE_ID = 'x" , "level": "ERROR'


@pytest.fixture(scope="module")
def engine() -> CrossCaseRunner:
    folder = Path(__file__).resolve().parent.parent / "models" / "default"
    spec = ModelSpec.model_validate_json((folder / "model_spec.json").read_text())
    onnx = OnnxSegmentationRunner(
        folder / "model.onnx", spec, RunnerSettings(tile_batch_size=4, intra_op_threads=1)
    )
    return CrossCaseRunner(onnx, spec, tile_step=0.5, tile_batch_size=4, model_version="1")


class RecordingService:
    """The runner service as the front sees it: ``segment`` on the real engine, keeping the
    cases it was sent (what ``bentoml.depends`` would pickle)."""

    def __init__(self, engine: CrossCaseRunner) -> None:
        self.engine = engine
        self.received: list[RunnerCase] = []

    def segment(self, cases: list[RunnerCase]) -> list:
        self.received.extend(cases)
        return self.engine.segment(cases)


def remote_for(service: object, spec: ModelSpec) -> RemoteSegmentationRunner:
    return RemoteSegmentationRunner(
        service,
        spec,
        model_name="m",
        model_version="1",
        volume_dtype="float32",
        engine="onnxruntime",
        providers=["CPUExecutionProvider"],
        precision="fp32",
    )


def patch_volume(spec: ModelSpec, seed: int, channels: int | None = None) -> np.ndarray:
    count = len(spec.modalities) if channels is None else channels
    shape = (count, *spec.patch_size)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def json_entries(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [json.loads(line) for line in caplog.text.splitlines() if line.startswith("{")]


def test_remote_runner_sends_the_bound_request_id(engine: CrossCaseRunner) -> None:
    service = RecordingService(engine)
    remote = remote_for(service, engine.spec)
    volume = patch_volume(engine.spec, 1)
    with bound_request_id("front-req-1"):
        prediction = remote.predict(volume, mirror_tta=False)
    assert prediction.probabilities.shape[1:] == volume.shape[1:]
    assert [case.request_id for case in service.received] == ["front-req-1"]
    # outside a request there is no id to forward
    assert remote.runner_case(volume, mirror_tta=False).request_id is None
    assert current_request_id() is None


def test_an_unsafe_request_id_is_refused(engine: CrossCaseRunner) -> None:
    remote = remote_for(None, engine.spec)
    volume = patch_volume(engine.spec, 2)
    with bound_request_id(UNSAFE_ID):
        assert remote.runner_case(volume, mirror_tta=False).request_id is None
    with bound_request_id("a" * 129):  # longer than X-Request-ID may be
        assert remote.runner_case(volume, mirror_tta=False).request_id is None
    with pytest.raises(ValidationError, match="request_id"):
        RunnerCase(volume=volume, request_id=UNSAFE_ID)
    assert RunnerCase(volume=volume, request_id="ok-1:2.3_4").request_id == "ok-1:2.3_4"


def test_runner_logs_carry_each_cases_request_id(
    engine: CrossCaseRunner, caplog: pytest.LogCaptureFixture
) -> None:
    # the runner service moved from runners/ to cerebrascan/serving/: its logger's level
    caplog.set_level(logging.INFO, logger="cerebrascan.serving.runner_service")
    caplog.handler.setFormatter(JsonFormatter())
    spec = engine.spec
    cases = [
        RunnerCase(volume=patch_volume(spec, 3), request_id="case-a"),
        RunnerCase(volume=patch_volume(spec, 4, channels=3), request_id="case-b"),  # refused
        RunnerCase(volume=patch_volume(spec, 5)),  # sent without an id
        RunnerCase(volume=patch_volume(spec, 6), request_id="case-d"),
    ]
    results = engine.segment(cases)
    assert results[1].error_kind == "input"
    assert all(results[i].error is None for i in (0, 2, 3))
    entries = [
        e for e in json_entries(caplog) if e["logger"] == "cerebrascan.serving.runner_service"
    ]
    per_case = [e for e in entries if e["message"].startswith("runner case")]
    assert [e["request_id"] for e in per_case] == ["case-a", "case-b", None, "case-d"]
    assert per_case[1]["level"] == "WARNING" and "3 channels" in per_case[1]["message"]
    (batch,) = [e for e in entries if e["message"].startswith("runner call")]
    assert "request ids case-a, case-b, -, case-d" in batch["message"]
    assert batch["request_id"] is None  # the batch line belongs to no single request
