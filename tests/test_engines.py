"""Runner engines on the CPU: torch vs ONNX Runtime parity, the precision guard, IO binding,
TensorRT settings (profile, cache keys) and refusals of engines this machine cannot run.

The GPU paths themselves (CUDA EP, TensorRT EP, native TensorRT, torch on CUDA) need a GPU;
``benchmarks/gpu_check.sh`` checks and times them on a lent machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cerebrascan.settings import Settings  # noqa: E402
from runners.engine_cache import engine_cache_key, tile_profile, timing_cache_key  # noqa: E402
from runners.errors import RunnerConfigError  # noqa: E402
from runners.factory import build_runner  # noqa: E402
from runners.onnx_runner import OnnxSegmentationRunner, provider_options  # noqa: E402
from runners.precision_guard import (  # noqa: E402
    REFERENCE_TILE_SEED,
    compare_precisions,
    reference_tile,
)
from runners.settings import RunnerSettings  # noqa: E402
from runners.torch_runner import TorchSegmentationRunner  # noqa: E402
from schemas.model_spec import ModelSpec  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
DEVICE = os.environ.get("CEREBRASCAN_TEST_DEVICE", "cpu")
"""The torch engine's device in these tests; benchmarks/gpu_check.sh sets cuda."""


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


@pytest.fixture(scope="module")
def volume(spec: ModelSpec) -> np.ndarray:
    """A preprocessed-like volume larger than one patch along x (so tiles overlap)."""
    tile = reference_tile(spec)[0]
    return np.ascontiguousarray(np.concatenate([tile, tile[:, :16]], axis=1))


@pytest.mark.parametrize("mirror_tta", [False, True])
def test_torch_engine_matches_onnxruntime(spec, volume, mirror_tta) -> None:
    """Same weights (safetensors vs ONNX), same tiling: same probabilities."""
    settings = RunnerSettings(tile_batch_size=4)
    torch_runner = TorchSegmentationRunner(
        DEFAULT_MODEL, spec, settings.model_copy(update={"device": DEVICE})
    )
    onnx_runner = OnnxSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, settings)
    ours = torch_runner.predict(volume, mirror_tta=mirror_tta).probabilities
    reference = onnx_runner.predict(volume, mirror_tta=mirror_tta).probabilities
    assert ours.shape == reference.shape == (spec.num_outputs, *volume.shape[1:])
    assert float(np.abs(ours - reference).max()) < 1e-3
    assert (ours.argmax(0) == reference.argmax(0)).mean() > 0.9999
    assert len(np.unique(reference.argmax(0))) > 1, "reference volume is all one class"
    assert torch_runner.name == "torch" and torch_runner.precision == "fp32"


def test_torch_engine_disagreement_path_matches_device_path(spec, volume) -> None:
    """With the flips' disagreement asked for, the host path gives the same probabilities."""
    runner = TorchSegmentationRunner(DEFAULT_MODEL, spec, RunnerSettings(tile_batch_size=8))
    device = runner.predict(volume, mirror_tta=True)
    host = runner.predict(volume, mirror_tta=True, tta_disagreement=True)
    assert device.tta_disagreement is None and host.tta_disagreement is not None
    assert float(np.abs(device.probabilities - host.probabilities).max()) < 1e-4


def test_fp16_kept_when_it_agrees(spec) -> None:
    settings = RunnerSettings(precision="fp16", device=DEVICE)
    runner = TorchSegmentationRunner(DEFAULT_MODEL, spec, settings)
    assert runner.decision.requested == "fp16"
    assert runner.precision == "fp16", runner.decision.note
    assert runner.decision.argmax_agreement is not None
    assert runner.decision.argmax_agreement >= 0.999


def _overflowing_copy(tmp_path: Path) -> Path:
    """The default model with its first convolution scaled by 3e4 (weights and bias).

    Instance norm right after it removes the scale, so fp32 output is unchanged, but the
    convolution's fp16 output overflows to inf: the mechanism behind all-background fp16
    engines (MIC-DKFZ/nnUNet issue 2874), caused for real rather than simulated.
    """
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "overflowing"
    shutil.copytree(DEFAULT_MODEL, folder)
    weights = load_file(str(folder / "network.safetensors"))
    # The first convolution (save_model keeps one name of PlainConvUNet's aliased encoder).
    first = [k for k in weights if k.endswith("encoder.stages.0.0.convs.0.all_modules.0.weight")]
    first += [k for k in weights if k.endswith("encoder.stages.0.0.convs.0.all_modules.0.bias")]
    assert len(first) == 2, sorted(weights)[:4]
    for key in first:
        weights[key] = weights[key] * 3e4
    save_file(weights, str(folder / "network.safetensors"))
    return folder


def test_fp16_overflow_falls_back_to_fp32(spec, volume, tmp_path) -> None:
    folder = _overflowing_copy(tmp_path)
    runner = TorchSegmentationRunner(folder, spec, RunnerSettings(precision="fp16", device=DEVICE))
    assert runner.precision == "fp32"
    assert runner.decision.note is not None and "fp16" in runner.decision.note
    assert "non-finite" in runner.decision.note
    # ... and serving in fp32 still gives the original model's answer.
    fp32 = TorchSegmentationRunner(DEFAULT_MODEL, spec, RunnerSettings())
    served = runner.predict(volume, mirror_tta=False).probabilities
    original = fp32.predict(volume, mirror_tta=False).probabilities
    assert (served.argmax(0) == original.argmax(0)).mean() > 0.999


def _logits(spec: ModelSpec, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (1, spec.num_outputs, 8, 8, 8)).astype(np.float32)


def test_guard_rejects_all_background_engine(spec) -> None:
    reference = _logits(spec)
    background = np.zeros_like(reference)
    background[:, 0] = 50.0
    decision = compare_precisions(
        reference,
        background,
        spec,
        requested="fp16",
        min_agreement=0.999,
        max_probability_difference=0.1,
    )
    assert decision.used == "fp32" and decision.argmax_agreement is not None
    assert decision.argmax_agreement < 0.5
    assert "decision agreement" in (decision.note or "")


def test_guard_bounds_are_the_settings(spec) -> None:
    reference = _logits(spec)
    nudged = reference + np.float32(0.05)  # a constant shift changes no softmax
    kept = compare_precisions(
        reference,
        nudged,
        spec,
        requested="fp16",
        min_agreement=1.0,
        max_probability_difference=1e-3,
    )
    assert kept.used == "fp16"
    shifted = reference.copy()
    shifted[:, 1] += 0.3
    strict = compare_precisions(
        reference,
        shifted,
        spec,
        requested="fp16",
        min_agreement=0.0,
        max_probability_difference=0.01,
    )
    assert strict.used == "fp32" and "max |dp|" in (strict.note or "")


def test_guard_on_region_outputs(spec) -> None:
    regions = spec.model_copy(
        update={
            "output_kind": "sigmoid_regions",
            "regions": [[1, 2, 3], [1, 3], [3]],
            "regions_class_order": [2, 1, 3],
        }
    )
    reference = np.random.default_rng(1).normal(0, 3, (1, 3, 8, 8, 8)).astype(np.float32)
    flipped = reference.copy()
    flipped[:, 2] = -flipped[:, 2]  # the ET region inverted
    decision = compare_precisions(
        reference,
        flipped,
        regions,
        requested="fp16",
        min_agreement=0.99,
        max_probability_difference=1,
    )
    assert decision.used == "fp32"
    same = compare_precisions(
        reference,
        reference,
        regions,
        requested="fp16",
        min_agreement=1.0,
        max_probability_difference=0,
    )
    assert same.used == "fp16"


def test_onnxruntime_io_binding_matches_session_run(spec) -> None:
    """The IO-binding call the CUDA/TensorRT EPs use, exercised on CPU tensors."""
    runner = OnnxSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, RunnerSettings())
    tiles = reference_tile(spec, batch=3)
    bound = runner.predict_bound_tiles(torch.from_numpy(tiles)).numpy()
    direct = runner.predict_tiles(tiles)
    assert bound.shape == direct.shape == (3, spec.num_outputs, *spec.patch_size)
    assert float(np.abs(bound - direct).max()) < 1e-5


def test_tile_profile_covers_every_batch_the_window_sends(spec) -> None:
    with_flips = tile_profile(spec, tile_batch_size=2)  # 8 flips travel together
    assert (with_flips.min_batch, with_flips.max_batch) == (1, 8)
    assert with_flips.ort_option(8) == "image:8x4x64x64x64"
    plain = tile_profile(spec.model_copy(update={"mirror_axes": ()}), tile_batch_size=6)
    assert plain.max_batch == 6
    # 17 tiles per call asked, 8 flips: 2 tiles (16 inputs) per call; 17 without TTA.
    assert tile_profile(spec, tile_batch_size=17).max_batch == 17


def test_engine_cache_key_changes_with_everything_that_invalidates_an_engine(spec) -> None:
    profile = tile_profile(spec, 8)
    base = {
        "onnx_sha256": "a" * 64,
        "precision": "fp16",
        "profile": profile,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "backend": "tensorrt",
        "backend_version": "10.9.0",
    }
    key = engine_cache_key(**base)  # type: ignore[arg-type]
    assert key == engine_cache_key(**base)  # type: ignore[arg-type]
    changes = {
        "onnx_sha256": "b" * 64,
        "precision": "fp32",
        "profile": tile_profile(spec, 16),
        "gpu_name": "NVIDIA H200",
        "compute_capability": "8.0",
        "backend": "onnxruntime-trt-ep",
        "backend_version": "10.10.0",
    }
    for field, value in changes.items():
        assert engine_cache_key(**{**base, field: value}) != key, field  # type: ignore[arg-type]
    timing = timing_cache_key(gpu_name="g", compute_capability="9.0", backend_version="10.9")
    assert timing != timing_cache_key(gpu_name="g", compute_capability="9.0", backend_version="9")


def test_tensorrt_ep_options(spec, tmp_path) -> None:
    settings = RunnerSettings(
        providers=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        device="cuda:1",
        precision="fp16",
        tile_batch_size=2,
    )
    h100 = ("NVIDIA H100 80GB HBM3", "9.0")
    options = provider_options(
        spec, settings, onnx_sha256="c" * 64, engine_cache_dir=tmp_path, precision="fp16", gpu=h100
    )
    assert [name for name, _ in options] == settings.providers
    trt = options[0][1]
    assert trt["trt_fp16_enable"] is True and trt["device_id"] == 1
    assert trt["trt_engine_cache_enable"] and trt["trt_timing_cache_enable"]
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path / "ort-trt"))
    assert trt["trt_profile_max_shapes"] == "image:8x4x64x64x64"
    assert trt["trt_profile_min_shapes"] == "image:1x4x64x64x64"
    assert options[1] == (
        "CUDAExecutionProvider",
        {
            "device_id": 1,
            "cudnn_conv_algo_search": "HEURISTIC",
            "use_tf32": 0,
            "arena_extend_strategy": "kSameAsRequested",
        },
    )
    fp32 = provider_options(
        spec, settings, onnx_sha256="c" * 64, engine_cache_dir=tmp_path, precision="fp32", gpu=h100
    )
    assert fp32[0][1]["trt_fp16_enable"] is False
    assert fp32[0][1]["trt_engine_cache_path"] != trt["trt_engine_cache_path"]


def test_reduced_precision_without_tensorrt_ep_is_refused(spec) -> None:
    with pytest.raises(RunnerConfigError, match="precision='fp16' with onnxruntime needs"):
        OnnxSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, RunnerSettings(precision="fp16"))


def test_engines_this_machine_cannot_run_are_refused_by_name(spec, tmp_path) -> None:
    cache = tmp_path / "cache"
    if not torch.cuda.is_available():
        with pytest.raises(RunnerConfigError, match="sees no CUDA device"):
            build_runner(DEFAULT_MODEL, spec, RunnerSettings(engine="torch", device="cuda"), cache)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RunnerConfigError, match="needs the tensorrt and torch packages"):
            build_runner(
                DEFAULT_MODEL, spec, RunnerSettings(engine="tensorrt", device="cuda"), cache
            )
    no_weights = spec.model_copy(update={"torch_network": None})
    with pytest.raises(RunnerConfigError, match="has no torch_network"):
        build_runner(DEFAULT_MODEL, no_weights, RunnerSettings(engine="torch"), cache)


def test_settings_refuse_unknown_engine_and_device() -> None:
    with pytest.raises(ValueError, match="engine"):
        Settings(runner={"engine": "tflite"})
    with pytest.raises(ValueError, match="device"):
        Settings(runner={"device": "gpu0"})


def test_reference_tile_other_seeds_give_new_tiles_of_the_same_kind(spec) -> None:
    """The guard's tile is its default seed's; another seed (experiments that must not see the
    guard's tile) gives a different tile, z-scored per channel like it."""
    guard_tile = reference_tile(spec)
    assert np.array_equal(guard_tile, reference_tile(spec, seed=REFERENCE_TILE_SEED))
    other = reference_tile(spec, 2, seed=REFERENCE_TILE_SEED + 1)
    assert other.shape == (2, *guard_tile.shape[1:]) and other.dtype == np.float32
    assert np.array_equal(other[0], other[1])
    assert not np.allclose(other[0], guard_tile[0])
    np.testing.assert_allclose(other[0].mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(other[0].std(axis=(1, 2, 3)), 1, atol=1e-3)
