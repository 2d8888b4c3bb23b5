"""The device-resident cross-case window (runner service on a GPU), checked on CPU tensors.

Same tile plan and arithmetic as the host window: per case the same logits (to float summation
order), the same failures, tiles of several cases in one network call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runners.cross_case_batching import CaseRequest, cross_case_sliding_window  # noqa: E402
from runners.device_cross_case import device_cross_case_sliding_window  # noqa: E402
from runners.onnx_runner import OnnxSegmentationRunner  # noqa: E402
from runners.precision_guard import reference_tile  # noqa: E402
from runners.settings import RunnerSettings  # noqa: E402
from schemas.model_spec import ModelSpec  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


@pytest.fixture(scope="module")
def runner(spec: ModelSpec) -> OnnxSegmentationRunner:
    return OnnxSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, RunnerSettings())


def _window_arguments(spec: ModelSpec) -> dict:
    return {
        "patch_size": spec.patch_size,
        "num_classes": spec.num_outputs,
        "channels": len(spec.modalities),
        "step": 0.5,
        "batch_size": 4,
    }


def test_device_window_matches_the_host_window_case_by_case(spec, runner) -> None:
    tile = reference_tile(spec)[0]
    cases = [
        CaseRequest(volume=np.ascontiguousarray(np.concatenate([tile, tile[:, :20]], axis=1))),
        CaseRequest(volume=tile.astype(np.float16)),  # shares a call with case 0's tiles
        CaseRequest(volume=tile[:2].copy()),  # wrong channel count: fails alone
        CaseRequest(volume=tile[:, :40, :50, :60].copy(), mirror_axes=(0, 1)),  # padded, TTA
    ]
    host = cross_case_sliding_window(cases, runner.predict_tiles, **_window_arguments(spec))
    device = device_cross_case_sliding_window(
        cases,
        runner.predict_bound_tiles,
        device=torch.device("cpu"),
        **_window_arguments(spec),
    )
    assert device.errors == host.errors
    assert device.errors[2] is not None and "channels" in device.errors[2]
    assert device.batch_sizes == host.batch_sizes
    assert device.mixed_batches == host.mixed_batches > 0
    for index in (0, 1, 3):
        host_out, device_out = host.outputs[index], device.outputs[index]
        assert host_out is not None and device_out is not None
        assert (
            device_out.logits.shape
            == host_out.logits.shape
            == (
                spec.num_outputs,
                *cases[index].volume.shape[1:],
            )
        )
        assert float(np.abs(device_out.logits - host_out.logits).max()) < 1e-4


def test_a_case_whose_tiles_fail_fails_alone(spec, runner) -> None:
    """The failing network is a test double: NaN from a real engine needs a broken GPU."""
    tile = reference_tile(spec)[0]
    poisoned = tile.copy()
    poisoned[:] = 7.0  # the double returns NaN for tiles of this constant volume

    def network(batch: torch.Tensor) -> torch.Tensor:
        logits = runner.predict_bound_tiles(batch)
        poisoned_tiles = (batch == 7.0).flatten(1).all(dim=1)
        logits[poisoned_tiles] = float("nan")
        return logits

    cases = [CaseRequest(volume=tile), CaseRequest(volume=poisoned), CaseRequest(volume=tile)]
    result = device_cross_case_sliding_window(
        cases, network, device=torch.device("cpu"), **_window_arguments(spec)
    )
    assert result.outputs[1] is None
    assert result.errors[1] is not None and "NaN" in result.errors[1]
    assert result.outputs[0] is not None and result.outputs[2] is not None
    np.testing.assert_allclose(result.outputs[0].logits, result.outputs[2].logits, atol=1e-5)


def test_disagreement_is_left_to_the_host_window(spec, runner) -> None:
    tile = reference_tile(spec)[0]
    with pytest.raises(ValueError, match="host cross-case window"):
        device_cross_case_sliding_window(
            [CaseRequest(volume=tile, mirror_axes=(0,), return_disagreement=True)],
            runner.predict_bound_tiles,
            device=torch.device("cpu"),
            **_window_arguments(spec),
        )


def test_the_runner_service_engine_tiles_on_the_device_when_asked(spec, runner) -> None:
    """CrossCaseRunner with a device window (the torch engine, here on the CPU) gives the
    host window's probabilities; a case asking for the disagreement still gets it (host)."""
    from cerebrascan.serving.runner_service import CrossCaseRunner, RunnerCase
    from runners.torch_runner import TorchSegmentationRunner

    torch_engine = TorchSegmentationRunner(DEFAULT_MODEL, spec, RunnerSettings())
    arguments = {"tile_step": 0.5, "tile_batch_size": 4, "model_version": "1"}
    on_device = CrossCaseRunner(torch_engine, spec, device_resident=True, **arguments)
    on_host = CrossCaseRunner(torch_engine, spec, device_resident=False, **arguments)
    assert on_device.device_window is not None and on_host.device_window is None
    # auto: only a CUDA device window makes the runner service tile on the device
    assert CrossCaseRunner(torch_engine, spec, **arguments).device_window is None
    assert CrossCaseRunner(runner, spec, **arguments).device_window is None

    tile = reference_tile(spec)[0]
    volume = np.ascontiguousarray(np.concatenate([tile, tile[:, :24]], axis=1))
    cases = [RunnerCase(volume=volume), RunnerCase(volume=tile, mirror_tta=True)]
    device_results, host_results = on_device.segment(cases), on_host.segment(cases)
    for device_result, host_result in zip(device_results, host_results, strict=True):
        assert device_result.error is None and device_result.probabilities is not None
        assert host_result.probabilities is not None
        np.testing.assert_allclose(
            device_result.probabilities.astype(np.float32),
            host_result.probabilities.astype(np.float32),
            atol=2e-3,
        )
    with_disagreement = on_device.segment(
        [RunnerCase(volume=tile, mirror_tta=True, tta_disagreement=True)]
    )
    assert with_disagreement[0].tta_disagreement is not None
