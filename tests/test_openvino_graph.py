"""The OpenVINO graph rewrite (runners/openvino_graph.py): zero-channel padding is exact.

The bundled network on the guard's reference tile, rewritten and compiled in fp32, must match
ONNX Runtime fp32 as closely as the unrewritten OpenVINO model does; small hand-built graphs
check the parts a plain U-Net does not exercise (per-channel slopes, a residual add that must
stay unpadded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import openvino as ov
import openvino.opset13 as ops
import pytest

from runners.openvino_graph import (
    CHANNEL_MULTIPLE,
    channel_multiple_for,
    prepare_network,
)
from runners.precision_guard import reference_tile
from schemas.model_spec import ModelSpec

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
LOGIT_DIFFERENCE_MAX = 1e-4
"""fp32 rewrite vs ONNX Runtime fp32: max |Δlogit| relative to max |logit| (issue 21)."""


def _compile(model: Any, precision: str = "f32") -> Any:
    config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1}
    return ov.Core().compile_model(model, "CPU", config)


def _run(model: Any, x: np.ndarray) -> np.ndarray:
    return np.array(_compile(model)({0: x})[0], dtype=np.float32)


def _channels_of(model: Any, kind: str) -> list[int]:
    return [
        int(node.output(0).get_partial_shape()[1].get_length())
        for node in model.get_ordered_ops()
        if node.get_type_name() == kind
    ]


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


def test_bundled_network_padded_matches_onnxruntime_fp32(spec: ModelSpec) -> None:
    core = ov.Core()
    tile = reference_tile(spec)
    reference = ort.InferenceSession(
        str(DEFAULT_MODEL / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {spec.input_name: tile})[0]
    unpadded = _run(core.read_model(DEFAULT_MODEL / "model.onnx"), tile)
    model = prepare_network(core.read_model(DEFAULT_MODEL / "model.onnx"), CHANNEL_MULTIPLE)
    # 12 and 24 feature channels became 16 and 32; the input and the 4 logits are unchanged.
    assert sorted(set(_channels_of(model, "MVN"))) == [16, 32, 48, 96]
    assert _channels_of(model, "Concat") == [96, 64, 32]
    assert model.inputs[0].get_partial_shape()[1].get_length() == len(spec.modalities)
    logits = _run(model, tile)
    assert logits.shape == reference.shape
    relative = float(np.abs(logits - reference).max() / np.abs(reference).max())
    assert relative <= LOGIT_DIFFERENCE_MAX, relative
    # Labels: as the unpadded OpenVINO model's (which, like any other fp32 engine, may split a
    # near-tie voxel differently from ONNX Runtime: 1 of 262,144 on this tile).
    np.testing.assert_array_equal(logits.argmax(1), unpadded.argmax(1))
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.99999


def _conv(x: Any, weights: np.ndarray) -> Any:
    return ops.convolution(x, ops.constant(weights), [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])


def _norm_act(x: Any, channels: int, rng: np.random.Generator, slope: np.ndarray) -> Any:
    y = ops.add(x, ops.constant(rng.normal(size=(1, channels, 1, 1, 1)).astype(np.float32)))
    y = ops.mvn(y, ops.constant(np.array([2, 3, 4])), True, 1e-5, "inside_sqrt")
    y = ops.multiply(y, ops.constant(rng.normal(size=(1, channels, 1, 1, 1)).astype(np.float32)))
    y = ops.add(y, ops.constant(rng.normal(size=(1, channels, 1, 1, 1)).astype(np.float32)))
    return ops.prelu(y, ops.constant(slope))


def _small_graph(residual: bool) -> Any:
    """conv 3->6, norm, per-channel PReLU, strided conv 6->6, norm, transposed conv 6->5,
    concat with the first stage, conv 11->2; with ``residual`` the first stage also adds a conv
    of itself (an add of two feature maps: no per-channel constant)."""
    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 8, 8, 8], np.float32)
    w = lambda *shape: (rng.normal(size=shape) * 0.3).astype(np.float32)  # noqa: E731
    a = _norm_act(_conv(x, w(6, 3, 3, 3, 3)), 6, rng, rng.uniform(0, 0.3, 6).astype(np.float32))
    if residual:
        a = ops.add(a, _conv(a, w(6, 6, 3, 3, 3)))
    down = ops.convolution(
        a, ops.constant(w(6, 6, 2, 2, 2)), [2, 2, 2], [0, 0, 0], [0, 0, 0], [1, 1, 1]
    )
    up = ops.convolution_backprop_data(
        _norm_act(down, 6, rng, np.array([0.01], np.float32)),
        ops.constant(w(6, 5, 2, 2, 2)),
        [2, 2, 2],
    )
    merged = ops.concat([up, a], axis=1)
    out = _conv(merged, w(2, 11, 3, 3, 3))
    return ov.Model([out], [x])


def test_small_graph_rewrite_is_exact_up_to_rounding() -> None:
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8, 8)).astype(np.float32)
    for residual in (False, True):
        expected = _run(_small_graph(residual), x)
        rewritten = prepare_network(_small_graph(residual), 4)
        np.testing.assert_allclose(_run(rewritten, x), expected, rtol=1e-5, atol=1e-5)
        channels = _channels_of(rewritten, "MVN")
        # The residual add is not a per-channel op: the first stage keeps its 6 channels
        # there; the strided conv's 6 and the transposed conv's 5 become 8 either way.
        assert channels == ([6, 8] if residual else [8, 8])
        assert _channels_of(rewritten, "Concat") == ([14] if residual else [16])


def test_channel_multiple_follows_the_instruction_set() -> None:
    assert channel_multiple_for(("avx2", "fma", "avx512f"), "bf16") == 16
    assert channel_multiple_for(("avx2", "fma"), "fp16") == 8
    assert channel_multiple_for(("avx2", "fma", "avx512f"), "fp32") == 1
    model = _small_graph(False)
    assert prepare_network(model, 1) is model
    assert _channels_of(model, "MVN") == [6, 6]
    with pytest.raises(ValueError, match="channel_multiple must be at least 1, got 0"):
        prepare_network(model, 0)


def _feature_channels(runner: Any) -> set[int]:
    return set(_channels_of(runner.network, "MVN"))


@pytest.mark.skipif(
    "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
    reason="this CPU lacks BF16: the runner compiles no padded network",
)
def test_runner_pads_bf16_only_and_keys_the_cache_by_the_rewrite(
    spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runners.openvino_runner import OpenVINOSegmentationRunner
    from runners.settings import RunnerSettings

    model = DEFAULT_MODEL / "model.onnx"
    fp32 = OpenVINOSegmentationRunner(model, spec, RunnerSettings(engine="openvino"), tmp_path)
    assert _feature_channels(fp32) == {12, 24, 48, 96}
    settings = RunnerSettings(engine="openvino", precision="bf16", tile_batch_size=1)
    bf16 = OpenVINOSegmentationRunner(model, spec, settings, tmp_path)
    assert bf16.precision == "bf16", bf16.decision.note
    assert _feature_channels(bf16) == {16, 32, 48, 96}
    # The compiled network serves the unchanged input and 4 logits.
    logits = bf16.predict_tiles(reference_tile(spec))
    assert logits.shape == (1, spec.num_outputs, *spec.patch_size)
    # Another version of the rewrite compiles into another cache folder.
    key = bf16.cache_key("bf16")
    monkeypatch.setattr("runners.openvino_runner.GRAPH_REWRITE_VERSION", "pad-channels-v0")
    assert bf16.cache_key("bf16") != key


def test_a_consumer_it_cannot_pad_gets_the_original_channels_back() -> None:
    """A PReLU whose slope is an input (not a constant) cannot be padded: a Gather on the
    channel axis gives it the conv's 6 real channels, and the result is unchanged."""

    def build() -> Any:
        rng = np.random.default_rng(2)
        x = ops.parameter([1, 3, 6, 6, 6], np.float32)
        slope = ops.parameter([1], np.float32)
        y = ops.prelu(_conv(x, rng.normal(size=(6, 3, 3, 3, 3)).astype(np.float32)), slope)
        out = _conv(y, rng.normal(size=(2, 6, 3, 3, 3)).astype(np.float32))
        return ov.Model([out], [x, slope])

    inputs = {
        0: np.random.default_rng(3).normal(size=(1, 3, 6, 6, 6)).astype(np.float32),
        1: np.array([0.1], np.float32),
    }
    expected = _compile(build())(inputs)[0]
    rewritten = prepare_network(build(), 8)
    kinds = [node.get_type_name() for node in rewritten.get_ordered_ops()]
    assert "Gather" in kinds
    np.testing.assert_allclose(_compile(rewritten)(inputs)[0], expected, rtol=1e-5, atol=1e-5)
