"""The OpenVINO CPU engine: parity with ONNX Runtime fp32, its compiled-model cache, ``auto``,
reduced precision through the guard, and the refusals that stop a start.

Parity with nnUNetPredictor on an imported model is in tests/test_nnunet_parity.py (each case
runs both CPU engines against one reference).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cerebrascan.inputs.case_folder import read_case
from cerebrascan.segmentation import SegmentationResult, segment_study
from runners.engine_cache import cpu_features, cpu_model_cache_key
from runners.errors import RunnerConfigError
from runners.factory import build_runner, resolve_engine, resolve_precision
from runners.onnx_runner import OnnxSegmentationRunner
from runners.openvino_runner import OpenVINOSegmentationRunner, openvino_offers
from runners.precision_guard import compare_held_out_labels
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec

ov = pytest.importorskip("openvino")

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
LABEL_AGREEMENT_MIN = 0.999
PROBABILITY_DIFFERENCE_MAX = 1e-2
"""fp32 vs fp32: the convolution algorithms differ (measured max |dp| 2.1e-3 .. 3.4e-3 on the
phantoms, float16-stored probabilities, Xeon with AMX)."""
DICE_CHANGE_MAX = 0.005
"""The reduced-precision bound on held-out phantoms' labels, per region (issue 21)."""
CPU_HAS_BF16 = openvino_offers("bf16")


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


def _segment(runner: object, case: Path) -> SegmentationResult:
    study = read_case(case)
    return segment_study(study, runner, mirror_tta=False, keep_probabilities=True)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def onnxruntime_results(spec: ModelSpec, phantom_cases: list[Path]) -> list[SegmentationResult]:
    runner = OnnxSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, RunnerSettings())
    return [_segment(runner, case) for case in phantom_cases]


def test_fp32_matches_onnxruntime_on_phantoms(
    spec, cache_dir, phantom_cases, onnxruntime_results
) -> None:
    """Same ONNX, same windowing: labels agree >= 0.999 and probabilities within 5e-3."""
    runner = build_runner(DEFAULT_MODEL, spec, RunnerSettings(engine="openvino"), cache_dir)
    assert isinstance(runner, OpenVINOSegmentationRunner)
    assert runner.name == "openvino" and runner.precision == "fp32"
    assert runner.providers[0].startswith("openvino-") and runner.providers[0].endswith(":CPU")
    for case, reference in zip(phantom_cases, onnxruntime_results):
        ours = _segment(runner, case)
        assert ours.labels.shape == reference.labels.shape
        agreement = float((ours.labels == reference.labels).mean())
        assert reference.probabilities is not None and ours.probabilities is not None
        difference = float(
            np.abs(
                ours.probabilities.astype(np.float32) - reference.probabilities.astype(np.float32)
            ).max()
        )
        print(f"{case.name}: label agreement {agreement:.6f}, max |dp| {difference:.2e}")
        assert (reference.labels > 0).any(), "empty reference: the comparison would be vacuous"
        assert agreement >= LABEL_AGREEMENT_MIN
        assert difference <= PROBABILITY_DIFFERENCE_MAX


def test_mirror_tta_and_batch_sizes_match_onnxruntime(spec, cache_dir) -> None:
    """Dynamic tile batch: 8 flips per call with TTA, and a last call of fewer tiles."""
    from runners.precision_guard import reference_tile

    tile = reference_tile(spec)[0]
    volume = np.ascontiguousarray(np.concatenate([tile, tile[:, :16]], axis=1))
    settings = RunnerSettings(engine="openvino", tile_batch_size=3)
    ours = build_runner(DEFAULT_MODEL, spec, settings, cache_dir)
    reference = OnnxSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, settings)
    a = ours.predict(volume, mirror_tta=True).probabilities
    b = reference.predict(volume, mirror_tta=True).probabilities
    assert a.shape == b.shape == (spec.num_outputs, *volume.shape[1:])
    assert float(np.abs(a - b).max()) <= PROBABILITY_DIFFERENCE_MAX
    assert (a.argmax(0) == b.argmax(0)).mean() >= LABEL_AGREEMENT_MIN
    # Without TTA: the 2 tiles in one partial call (batch 2 of the configured 3).
    c = ours.predict(volume, mirror_tta=False).probabilities
    d = reference.predict(volume, mirror_tta=False).probabilities
    assert float(np.abs(c - d).max()) <= PROBABILITY_DIFFERENCE_MAX
    # One static shape per batch size met: the configured 3, the 8 flips of one tile, the
    # 2-tile partial call; each compiled with a static input shape.
    assert set(ours._by_batch) == {3, 8, 2}
    for batch, compiled in ours._by_batch.items():
        shape = compiled.inputs[0].get_partial_shape()
        assert shape.is_static and shape[0].get_length() == batch
    # Reused infer requests: two threads at once each get their own logits (different tiles:
    # a shared output buffer would hand one thread the other's).
    tiles = [volume[None, :, :64].copy(), volume[None, :, 16:].copy()]
    expected = [ours.predict_tiles(t) for t in tiles]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            got = list(pool.map(ours.predict_tiles, tiles))
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e)
    assert 1 <= len(ours._idle[1]) <= 2


def test_compiled_model_is_cached_under_its_key(spec, tmp_path) -> None:
    settings = RunnerSettings(engine="openvino", openvino_threads=1)
    first = OpenVINOSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, settings, tmp_path)
    second = OpenVINOSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, settings, tmp_path)
    assert not first.loaded_from_cache and second.loaded_from_cache
    assert first.cache_dir == second.cache_dir == tmp_path / "openvino" / first.cache_key("fp32")
    assert any(first.cache_dir.iterdir()), "nothing was written to the cache"
    # threads come from settings
    assert first.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert first.compiled.get_property("NUM_STREAMS") == 1


def test_cache_key_covers_network_precision_cpu_and_version() -> None:
    base = {
        "onnx_sha256": "a" * 64,
        "precision": "fp32",
        "input_shape": (4, 64, 64, 64),
        "cpu_name": "Intel(R) Xeon(R)",
        "features": ("avx2", "avx512f", "amx_bf16"),
        "backend": "openvino",
        "backend_version": "2026.4.1",
    }
    key = cpu_model_cache_key(**base)  # type: ignore[arg-type]
    assert key == cpu_model_cache_key(**base)  # type: ignore[arg-type]
    for field, other in [
        ("onnx_sha256", "b" * 64),
        ("precision", "bf16"),
        ("input_shape", (4, 96, 96, 96)),
        ("cpu_name", "AMD EPYC"),
        ("features", ("avx2",)),
        ("backend_version", "2026.5.0"),
    ]:
        assert cpu_model_cache_key(**{**base, field: other}) != key, field  # type: ignore[arg-type]


def test_cpu_features_read_from_cpuinfo(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f amx_tile\n")
    assert cpu_features(cpuinfo) == ("avx2", "fma", "avx512f", "amx_tile")
    assert cpu_features(tmp_path / "missing") == ()


def test_auto_picks_openvino_on_cpu_only() -> None:
    assert resolve_engine(RunnerSettings(engine="auto")) == "openvino"
    gpu_providers = RunnerSettings(
        engine="auto", providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert resolve_engine(gpu_providers) == "onnxruntime"
    assert resolve_engine(RunnerSettings(engine="auto", device="cuda")) == "onnxruntime"
    assert resolve_engine(RunnerSettings(engine="onnxruntime")) == "onnxruntime"


def test_auto_precision_is_bf16_only_where_openvino_offers_it(monkeypatch) -> None:
    auto = RunnerSettings(engine="auto", precision="auto")
    assert resolve_precision(auto, "openvino") == ("bf16" if CPU_HAS_BF16 else "fp32")
    for engine in ("onnxruntime", "torch", "tensorrt"):
        assert resolve_precision(auto, engine) == "fp32"
    assert resolve_precision(RunnerSettings(precision="fp32"), "openvino") == "fp32"
    # a CPU without BF16 (the AVX2 class; not this machine, so its capabilities are faked):
    # auto is fp32 there, not the start-stopping explicit bf16
    monkeypatch.setattr(ov.Core, "get_property", lambda self, device, name: ["FP32", "INT8", "BIN"])
    assert resolve_precision(auto, "openvino") == "fp32"


def test_missing_openvino_stops_the_start_naming_it(spec, cache_dir, monkeypatch) -> None:
    """openvino is installed here; hiding the module is the only way to cause its absence."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(RunnerConfigError, match=r"runner.engine=openvino needs the openvino"):
        build_runner(DEFAULT_MODEL, spec, RunnerSettings(engine="openvino"), cache_dir)
    # ... while auto falls back to ONNX Runtime.
    assert resolve_engine(RunnerSettings(engine="auto")) == "onnxruntime"
    runner = build_runner(DEFAULT_MODEL, spec, RunnerSettings(engine="auto"), cache_dir)
    assert runner.name == "onnxruntime"


def test_gpu_device_is_refused(spec, cache_dir) -> None:
    with pytest.raises(RunnerConfigError, match=r"CPU only.*'cuda'"):
        build_runner(
            DEFAULT_MODEL, spec, RunnerSettings(engine="openvino", device="cuda"), cache_dir
        )


def test_bf16_on_a_cpu_without_it_stops_the_start(spec, cache_dir, monkeypatch) -> None:
    if CPU_HAS_BF16:
        # A CPU without BF16 (the AVX2 class) cannot be had on this machine, so only the
        # capability list OpenVINO reports is faked; the real check then runs.
        real_get_property = ov.Core.get_property

        def without_bf16(self, device, name):
            value = real_get_property(self, device, name)
            if name == "OPTIMIZATION_CAPABILITIES":
                return [c for c in value if str(c) != "BF16"]
            return value

        monkeypatch.setattr(ov.Core, "get_property", without_bf16)
    with pytest.raises(RunnerConfigError, match=r"runner.precision='bf16'.*BF16") as refusal:
        build_runner(
            DEFAULT_MODEL, spec, RunnerSettings(engine="openvino", precision="bf16"), cache_dir
        )
    assert "use precision fp32" in str(refusal.value)


@pytest.mark.skipif(not CPU_HAS_BF16, reason="this CPU lacks BF16: refusal tested instead")
def test_bf16_admitted_by_the_record_keeps_held_out_dice(
    spec, cache_dir, phantom_cases, onnxruntime_results
) -> None:
    """The default guard admits bf16 (reference tile + the model's committed held-out record,
    tests/test_precision_admission.py); on the session's phantoms too its labels stay within
    0.005 Dice of fp32 per region."""
    # precision auto: on this CPU (it has BF16) the factory asks for bf16, as the bento does
    settings = RunnerSettings(engine="openvino", precision="auto")
    runner = build_runner(DEFAULT_MODEL, spec, settings, cache_dir)
    assert runner.precision == "bf16", runner.decision.note
    assert runner.decision.requested == "bf16"
    assert runner.decision.argmax_agreement is not None
    assert runner.decision.argmax_agreement >= LABEL_AGREEMENT_MIN
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    check = compare_held_out_labels(
        [reference.labels for reference in onnxruntime_results],
        [_segment(runner, case).labels for case in phantom_cases],
        requested="bf16",
        max_dice_change=DICE_CHANGE_MAX,
    )
    print(f"bf16 held-out Dice change per region: {check.dice_changes}")
    assert check.passed and check.note is None, check.note
    assert check.cases == len(phantom_cases)


def test_held_out_check_refuses_a_changed_region_naming_it() -> None:
    """The guard's held-out half on label maps: one ET voxel of 100 lost fails 0.005."""
    reference = np.zeros((10, 10, 10), dtype=np.uint8)
    reference[:5] = 2  # SNFH
    reference[5:6] = 3  # 100 ET voxels
    candidate = reference.copy()
    candidate[5, 0, 0] = 2
    same = compare_held_out_labels(
        [reference], [reference.copy()], requested="bf16", max_dice_change=DICE_CHANGE_MAX
    )
    assert same.passed and same.dice_changes == {"WT": 0.0, "TC": 0.0, "ET": 0.0}
    changed = compare_held_out_labels(
        [reference, reference], [reference, candidate], requested="bf16", max_dice_change=0.005
    )
    assert not changed.passed
    assert changed.dice_changes["WT"] == 0.0  # the voxel stays tumour
    assert changed.dice_changes["ET"] == pytest.approx(1 - 2 * 99 / 199)
    assert changed.note is not None and "ET 0.0050" in changed.note and "bf16" in changed.note
    with pytest.raises(ValueError, match="same non-zero number"):
        compare_held_out_labels([reference], [], requested="bf16", max_dice_change=0.005)
