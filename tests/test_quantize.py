"""int8 for the OpenVINO engine: NNCF post-training quantisation (``cerebrascan pipeline
quantize``), its calibration tiles and record, and ``runner.precision: int8`` through the guard.

The quantiser runs for real (NNCF, OpenVINO backend) on the bundled model, calibrated on four
tiles of the session's two phantom cases: few tiles make a poor int8 model, but the tooling,
the record, determinism and both outcomes of the guard do not depend on its quality (the
shipped IR's figures are in benchmarks/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from cerebrascan.training.calibration import cut_tile, tile_starts
from cerebrascan.training.dataset import TrainingCase
from runners.errors import RunnerConfigError
from runners.factory import build_runner
from runners.openvino_runner import OpenVINOSegmentationRunner
from runners.precision_guard import reference_tile
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
TILES_PER_CASE = 2


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


def _model_copy(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "model_spec.json"):
        shutil.copy(DEFAULT_MODEL / name, target / name)
    return target


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory: pytest.TempPathFactory, phantom_cases: list[Path]) -> Path:
    """The bundled model quantised through the CLI on 2 tiles of each session phantom."""
    from cerebrascan.cli import main

    folder = _model_copy(tmp_path_factory.mktemp("int8") / "model")
    result = CliRunner().invoke(
        main,
        [
            "pipeline",
            "quantize",
            "--model-dir",
            str(folder),
            "--cases",
            str(phantom_cases[0].parent),
            "--tiles-per-case",
            str(TILES_PER_CASE),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "model.int8.xml" in result.output
    return folder


def _case_with_tumour(shape: tuple[int, int, int]) -> TrainingCase:
    images = np.zeros((4, *shape), dtype=np.float32)
    images[:, 5:-5, 5:-5, 5:-5] = 1.0  # the head
    labels = np.zeros(shape, dtype=np.uint8)
    labels[20:26, 30:34, 10:14] = 2
    return TrainingCase(images=images, labels=labels, foreground=np.argwhere(labels > 0))


def test_calibration_tiles_hold_tumour_and_brain_and_pad_small_axes() -> None:
    case = _case_with_tumour((80, 70, 40))  # the last axis is shorter than the patch
    patch = (64, 64, 64)
    starts = tile_starts(case, patch, 6, np.random.default_rng(3))
    assert len(starts) == 6
    assert starts == tile_starts(case, patch, 6, np.random.default_rng(3))
    for start in starts:
        tile = cut_tile(case, "CASE", start, patch)
        assert tile.data.shape == (4, *patch)
        assert tile.tumour_fraction > 0 and tile.brain_fraction > tile.tumour_fraction
        assert start[2] == -12  # centred: 24 voxels of zero padding, half each side
        assert not tile.data[:, :, :, :12].any()
    empty = TrainingCase(case.images, np.zeros_like(case.labels), np.zeros((0, 3), np.int64))
    assert tile_starts(empty, patch, 4, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="count must be >= 0, got -1"):
        tile_starts(case, patch, -1, np.random.default_rng(0))


def test_quantize_writes_an_int8_ir_and_its_calibration_record(int8_folder, phantom_cases) -> None:
    import nncf

    xml = int8_folder / "model.int8.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(xml))
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert kinds.count("FakeQuantize") >= 16  # inputs of the 16 quantised convolutions
    assert model.inputs[0].get_partial_shape()[0].is_dynamic  # the tile batch stays dynamic
    record = json.loads((int8_folder / "int8_calibration.json").read_text())
    assert record["model"] == "model.int8.xml"
    assert record["nncf_version"] == nncf.__version__
    assert record["preset"] == "performance"
    first, last = record["ignored_scope"]  # kept fp32: the first and the last convolution
    assert first.startswith("/encoder/stages.0/") and last.startswith("/decoder/seg_layers")
    calibration = record["calibration"]
    assert calibration["cases"] == sorted(case.name for case in phantom_cases)
    assert calibration["tiles"] == TILES_PER_CASE * len(phantom_cases)
    assert len(calibration["positions"]) == calibration["tiles"]
    assert all(p["tumour_fraction"] > 0 for p in calibration["positions"])
    assert calibration["tile_shape"] == [4, 64, 64, 64]


def test_quantize_is_deterministic(int8_folder, phantom_cases, tmp_path) -> None:
    """Same ONNX, cases, seed and options: the same IR, byte for byte."""
    from cerebrascan.inputs.case_folder import list_cases
    from cerebrascan.training.quantize import QuantizeOptions, quantize_model_folder

    record = quantize_model_folder(
        int8_folder,
        QuantizeOptions(tiles_per_case=TILES_PER_CASE),
        tmp_path,
        case_folders=list_cases(phantom_cases[0].parent),
    )
    for name in ("model.int8.xml", "model.int8.bin"):
        assert (tmp_path / name).read_bytes() == (int8_folder / name).read_bytes(), name
    first = json.loads((int8_folder / "int8_calibration.json").read_text())
    assert record["int8_sha256"] == first["int8_sha256"]
    assert record["calibration"]["positions"] == first["calibration"]["positions"]


def test_int8_serves_when_the_reference_tile_agrees(int8_folder, spec, tmp_path) -> None:
    """The reference-tile half of the guard (the held-out record is another helper's file:
    ``require_held_out_record=False`` is how its measuring tool builds the engine)."""
    settings = RunnerSettings(
        engine="openvino", precision="int8", precision_guard_min_agreement=0.5
    )
    runner = OpenVINOSegmentationRunner(
        int8_folder / "model.onnx", spec, settings, tmp_path, require_held_out_record=False
    )
    assert runner.precision == "int8" and runner.decision.note is None
    assert runner.decision.argmax_agreement is not None  # the guard ran
    fp32 = build_runner(int8_folder, spec, RunnerSettings(engine="openvino"), tmp_path)
    assert runner.cache_key("int8") != fp32.cache_key("fp32")
    tile = reference_tile(spec, batch=2)
    int8_logits = runner.predict_tiles(tile)
    fp32_logits = fp32.predict_tiles(tile)
    assert int8_logits.shape == fp32_logits.shape == (2, 4, 64, 64, 64)
    # quantised: not fp32's numbers, but the same decision on most voxels
    assert not np.allclose(int8_logits, fp32_logits, atol=1e-3)
    assert (int8_logits.argmax(1) == fp32_logits.argmax(1)).mean() > 0.9


def test_int8_refused_by_the_guard_serves_fp32_with_the_reason(int8_folder, spec, tmp_path) -> None:
    strict = RunnerSettings(engine="openvino", precision="int8", precision_guard_min_agreement=1.0)
    runner = build_runner(int8_folder, spec, strict, tmp_path)
    assert runner.precision == "fp32" and runner.decision.requested == "int8"
    note = runner.decision.note
    assert note is not None and note.startswith("int8 disagreed with fp32")
    assert "decision agreement" in note
    fp32 = build_runner(int8_folder, spec, RunnerSettings(engine="openvino"), tmp_path)
    tile = reference_tile(spec)
    np.testing.assert_array_equal(runner.predict_tiles(tile), fp32.predict_tiles(tile))
    # agreeing on the tile is not enough: without a held-out record int8 serves fp32 too
    loose = RunnerSettings(engine="openvino", precision="int8", precision_guard_min_agreement=0.5)
    unrecorded = build_runner(int8_folder, spec, loose, tmp_path)
    assert unrecorded.precision == "fp32"
    assert unrecorded.decision.note is not None and "held-out record" in unrecorded.decision.note


def test_missing_int8_model_stops_the_start_naming_the_command(spec, tmp_path) -> None:
    folder = _model_copy(tmp_path / "model")
    settings = RunnerSettings(engine="openvino", precision="int8")
    with pytest.raises(
        RunnerConfigError,
        match=r"model\.int8\.xml.*missing.*cerebrascan pipeline quantize --model-dir",
    ):
        build_runner(folder, spec, settings, tmp_path / "cache")


@pytest.mark.parametrize("engine", ["onnxruntime", "torch", "tensorrt"])
def test_other_engines_refuse_int8_naming_it(engine: str) -> None:
    with pytest.raises(ValidationError, match=rf"precision='int8'.*engine={engine!r}"):
        RunnerSettings(engine=engine, precision="int8")  # type: ignore[arg-type]
