"""Admission of bf16 / int8 by the issue-21 criteria: the reference tile's decision agreement at
start and the model folder's held-out record (``precisions.json``); fp16 keeps its |dp| bound.

The guard-level tests use ONNX Runtime fp32's own logits of the tile (as they are, or changed on
purpose) as the candidate engine's, so they run on any CPU; the OpenVINO bf16 tests need a CPU
with BF16 (AMX or AVX-512 BF16), as the existing bf16 tests do, and this machine has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
from click.testing import CliRunner

from runners.engine_cache import file_digest
from runners.fp32_reference import guard_reduced_precision
from runners.openvino_runner import openvino_offers
from runners.precision_guard import RECORD_COMMAND, reference_tile
from runners.precision_record import (
    PRECISION_RECORD_FILE,
    read_precision_record,
    separate_network_digest,
)
from runners.settings import RunnerSettings
from runners.sliding_window import activate
from schemas.model_spec import ModelSpec

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())


@pytest.fixture(scope="module")
def fp32_session() -> ort.InferenceSession:
    return ort.InferenceSession(
        str(DEFAULT_MODEL / "model.onnx"), providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def fp32_tile_logits(spec: ModelSpec, fp32_session: ort.InferenceSession) -> np.ndarray:
    (logits,) = fp32_session.run([spec.output_name], {spec.input_name: reference_tile(spec)})
    return np.asarray(logits, dtype=np.float32)


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A model folder of the default network without a held-out record."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "model_spec.json", "network.safetensors"):
        (folder / name).symlink_to(DEFAULT_MODEL / name)
    (folder / "model_card.md").write_text(
        (DEFAULT_MODEL / "model_card.md").read_text().split("## Reduced precisions")[0]
        + "## Limitations\nPhantoms only.\n"
    )
    return folder


def _record(folder: Path, **entries: dict[str, Any]) -> dict[str, Any]:
    """A record of ``folder``'s network with the given precision entries."""
    return {
        "schema": 1,
        "onnx_sha256": file_digest(folder / "model.onnx"),
        "held_out": {"cases": 3, "seed": 2000, "source": "test cases"},
        "fp32": {"dice_vs_truth": {"WT": 0.97, "TC": 0.97, "ET": 0.90}},
        "precisions": {
            name: {
                "engine": "openvino",
                "passed": True,
                "dice_change": {"WT": 0.0002, "TC": 0.0003, "ET": 0.0007},
                **entry,
            }
            for name, entry in entries.items()
        },
    }


def _write(folder: Path, record: dict[str, Any]) -> None:
    (folder / PRECISION_RECORD_FILE).write_text(json.dumps(record))


def _guard(folder: Path, spec: ModelSpec, candidate, precision: str, **settings: Any):
    return guard_reduced_precision(
        folder / "model.onnx",
        spec,
        candidate,
        RunnerSettings(**settings),
        precision=precision,
        engine="test engine",
    )


def _exact(logits: np.ndarray):
    """ONNX Runtime fp32's own logits of the tile as the candidate: agrees on every voxel."""

    def predict(tiles: np.ndarray) -> np.ndarray:
        assert tiles.shape[0] == logits.shape[0]
        return logits

    return predict


def test_no_record_serves_fp32_naming_the_command(model_folder, spec, fp32_tile_logits) -> None:
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "bf16")
    assert decision.requested == "bf16" and decision.used == "fp32"
    assert decision.argmax_agreement == 1.0  # the tile passed: the record is what is missing
    assert decision.note is not None and "absent" in decision.note
    assert RECORD_COMMAND.format(folder=model_folder) in decision.note
    # fp16 needs no record: its tile check alone decides, as before.
    assert _guard(model_folder, spec, _exact(fp32_tile_logits), "fp16").used == "fp16"


def test_record_of_another_network_counts_as_absent(model_folder, spec, fp32_tile_logits) -> None:
    _write(model_folder, _record(model_folder, bf16={}) | {"onnx_sha256": "0" * 64})
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "bf16")
    assert decision.used == "fp32"
    assert decision.note is not None and "another model.onnx" in decision.note
    assert "000000000000" in decision.note and RECORD_COMMAND.format(folder=model_folder) in (
        decision.note
    )


def test_invalid_or_incomplete_record_serves_fp32(model_folder, spec, fp32_tile_logits) -> None:
    (model_folder / PRECISION_RECORD_FILE).write_text('{"schema": 1, "precisions": []}')
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "bf16")
    assert decision.used == "fp32" and decision.note is not None
    assert "invalid" in decision.note and "onnx_sha256" in decision.note
    _write(model_folder, _record(model_folder, int8={}))
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "bf16")
    assert decision.used == "fp32" and decision.note is not None
    assert "not in the held-out record" in decision.note and "int8" in decision.note
    _write(model_folder, _record(model_folder, bf16={"dice_change": {"WT": 0.0, "TC": 0.0}}))
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "bf16")
    assert decision.used == "fp32" and decision.note is not None and "ET" in decision.note


def test_failed_record_serves_fp32_naming_the_region(model_folder, spec, fp32_tile_logits) -> None:
    failed = {"passed": False, "dice_change": {"WT": 0.001, "TC": 0.002, "ET": 0.012}}
    _write(model_folder, _record(model_folder, bf16=failed))
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "bf16")
    assert decision.used == "fp32" and decision.argmax_agreement == 1.0
    assert decision.note is not None and "ET 0.0120" in decision.note
    assert "WT" not in decision.note and "TC" not in decision.note
    assert decision.held_out_dice_change == failed["dice_change"]
    # Failed when recorded for another reason (the tile): refused, the record's reason named.
    tile_failed = {"passed": False, "note": "bf16 disagreed with fp32 on the reference tile"}
    _write(model_folder, _record(model_folder, bf16=tile_failed))
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "bf16")
    assert decision.used == "fp32" and decision.note is not None
    assert "when the record was made (bf16 disagreed" in decision.note
    # The bound is the setting's: a recorded pass is re-checked against a tighter one.
    _write(model_folder, _record(model_folder, bf16={}))
    tighter = _guard(
        model_folder,
        spec,
        _exact(fp32_tile_logits),
        "bf16",
        precision_guard_max_dice_change=0.0005,
    )
    assert tighter.used == "fp32" and tighter.note is not None and "ET 0.0007" in tighter.note


def test_passing_record_admits_and_max_dp_decides_fp16_only(
    model_folder, spec, fp32_tile_logits
) -> None:
    """A candidate that moves some probabilities by > 0.1 without changing a decision: bf16
    with a passing record serves (|dp| reported), fp16 is refused by |dp| as before."""
    probabilities = activate(fp32_tile_logits, spec.output_kind, axis=1)
    top = probabilities.max(axis=1)
    unsure = np.argwhere((top > 0.4) & (top < 0.7))[:50]  # (batch, z, y, x) of near-ties
    assert len(unsure) >= 10, "the reference tile has no unsure voxels to move"
    candidate_logits = fp32_tile_logits.copy()
    for b, z, y, x in unsure:
        winner = probabilities[b, :, z, y, x].argmax()
        candidate_logits[b, winner, z, y, x] += 4.0  # same decision, far surer
    changed = activate(candidate_logits, spec.output_kind, axis=1)
    assert (changed.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    assert float(np.abs(changed - probabilities).max()) > 0.2

    def candidate(tiles: np.ndarray) -> np.ndarray:
        return candidate_logits

    _write(model_folder, _record(model_folder, bf16={}))
    bf16 = _guard(model_folder, spec, candidate, "bf16")
    assert bf16.used == "bf16" and bf16.note is None
    assert bf16.max_probability_difference is not None and bf16.max_probability_difference > 0.2
    assert bf16.held_out_dice_change == {"WT": 0.0002, "TC": 0.0003, "ET": 0.0007}
    fp16 = _guard(model_folder, spec, candidate, "fp16")
    assert fp16.used == "fp32" and fp16.note is not None and "max |dp|" in fp16.note
    # Decisions still decide bf16: the reference tile's agreement bound refuses it.
    strict = _guard(model_folder, spec, candidate, "bf16", precision_guard_min_agreement=1.0)
    assert strict.used == "bf16"  # every decision agrees: 1.0 >= 1.0
    flipped = candidate_logits.copy()
    flipped[:, :, :8] = flipped[:, ::-1, :8]  # 1/8 of the tile's decisions change
    refused = _guard(model_folder, spec, lambda tiles: flipped, "bf16")
    assert refused.used == "fp32" and refused.note is not None and "agreement" in refused.note


def test_int8_entry_is_void_for_another_quantised_network(
    model_folder, spec, fp32_tile_logits
) -> None:
    """An int8 entry names its IR and digest: a re-quantised (or missing) IR voids it."""
    (model_folder / "model.int8.xml").write_text("<net/>")
    (model_folder / "model.int8.bin").write_bytes(b"weights-1")
    digest = separate_network_digest(model_folder, "model.int8.xml")
    int8 = {"model": "model.int8.xml", "model_sha256": digest}
    _write(model_folder, _record(model_folder, int8=int8))
    assert _guard(model_folder, spec, _exact(fp32_tile_logits), "int8").used == "int8"
    (model_folder / "model.int8.bin").write_bytes(b"weights-2")
    decision = _guard(model_folder, spec, _exact(fp32_tile_logits), "int8")
    assert decision.used == "fp32" and decision.note is not None
    assert "another model.int8.xml" in decision.note


CPU_HAS_BF16 = openvino_offers("bf16")
needs_bf16 = pytest.mark.skipif(not CPU_HAS_BF16, reason="this CPU lacks BF16: no bf16 to admit")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@needs_bf16
def test_openvino_bf16_serves_with_the_committed_record(spec, cache_dir) -> None:
    """The default model's committed precisions.json admits bf16 on this CPU, whatever the
    |dp| bound (measured max |dp| 0.217: a near-tie flip, counted by the agreement)."""
    from runners.factory import build_runner

    assert read_precision_record(DEFAULT_MODEL).record is not None
    settings = RunnerSettings(
        engine="openvino", precision="bf16", precision_guard_max_probability_difference=1e-6
    )
    runner = build_runner(DEFAULT_MODEL, spec, settings, cache_dir)
    decision = runner.decision
    print(f"bf16 reference tile: {decision}")
    assert runner.precision == "bf16" and decision.note is None, decision.note
    assert decision.argmax_agreement >= settings.precision_guard_min_agreement
    assert decision.max_probability_difference > 1e-6
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


@pytest.fixture(scope="module")
def small_case(phantom_case: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's phantom cropped to 96 voxels around its tumour: a held-out case that
    segments in a few tiles."""
    import nibabel as nib

    seg = nib.load(phantom_case / f"{phantom_case.name}-seg.nii.gz")
    centre = np.argwhere(np.asarray(seg.dataobj) > 0).mean(axis=0).astype(int)
    start = [max(0, min(c - 48, n - 96)) for c, n in zip(centre, seg.shape)]
    window = tuple(slice(a, a + 96) for a in start)
    case = tmp_path_factory.mktemp("held-out") / "SMALL-00000-000"
    case.mkdir()
    for part in ("t1n", "t1c", "t2w", "t2f", "seg"):
        image = nib.load(phantom_case / f"{phantom_case.name}-{part}.nii.gz")
        affine = image.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.asarray(start, dtype=float)
        data = np.asarray(image.dataobj)[window]
        nib.save(nib.Nifti1Image(data, affine, image.header), case / f"{case.name}-{part}.nii.gz")
    return case


@needs_bf16
def test_record_made_by_the_command_admits_bf16(model_folder, spec, cache_dir, small_case) -> None:
    """`cerebrascan pipeline precisions` on one held-out case: without its record bf16 serves
    fp32 (recompiled); with it, bf16 serves, and the card has the section."""
    from cerebrascan.cli import main
    from runners.factory import build_runner

    settings = RunnerSettings(engine="openvino", precision="bf16")
    refused = build_runner(model_folder, spec, settings, cache_dir)
    assert refused.precision == "fp32"
    assert refused.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert "cerebrascan pipeline precisions" in refused.decision.note

    arguments = ["pipeline", "precisions", "--model-dir", str(model_folder)]
    arguments += ["--cases", str(small_case.parent), "--max-cases", "1", "--seed", "424242"]
    arguments += ["--engine-cache-dir", str(cache_dir)]
    missing_int8 = CliRunner().invoke(main, [*arguments, "--precision", "int8"])
    assert missing_int8.exit_code != 0 and "pipeline quantize" in missing_int8.output
    result = CliRunner().invoke(main, [*arguments, "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    record = read_precision_record(model_folder).record
    assert record is not None and record.held_out.cases == 1 and record.held_out.seed == 424242
    entry = record.precisions["bf16"]
    assert entry.passed and entry.engine == "openvino" and entry.openvino
    assert set(entry.dice_change) == {"WT", "TC", "ET"}
    assert max(entry.dice_change.values()) <= 0.005
    assert min(record.fp32.dice_vs_truth.values()) > 0.5  # the case was really segmented
    card = (model_folder / "model_card.md").read_text()
    assert card.count("## Reduced precisions") == 1
    assert card.index("## Reduced precisions") < card.index("## Limitations")
    assert "| bf16 | openvino" in card

    admitted = build_runner(model_folder, spec, settings, cache_dir)
    assert admitted.precision == "bf16", admitted.decision.note


def test_the_registered_version_carries_the_record(registered_default_model: str) -> None:
    """The registry logs precisions.json with the version, so the served folder admits bf16."""
    from cerebrascan.registry import resolve_model_version
    from cerebrascan.settings import Settings

    settings = Settings()
    model = resolve_model_version(settings, settings.model_name, registered_default_model)
    record = read_precision_record(model.folder).record
    assert record is not None
    assert record.onnx_sha256 == file_digest(model.folder / "model.onnx")
    assert record == read_precision_record(DEFAULT_MODEL).record


def test_card_section_is_replaced_not_repeated() -> None:
    """The card's section is rewritten in place (before Limitations), at the end when the card
    has no Limitations, and a second run changes nothing."""
    from cerebrascan.training.precisions import with_precisions_section

    card = "# Card\n\n## Held-out evaluation\nfigures\n\n## Limitations\nPhantoms.\n"
    first = with_precisions_section(card, "## Reduced precisions\nold\n")
    assert first.index("## Reduced precisions") < first.index("## Limitations")
    second = with_precisions_section(first, "## Reduced precisions\nnew\n")
    assert second.count("## Reduced precisions") == 1 and "old" not in second
    assert second.endswith("## Limitations\nPhantoms.\n") and "figures" in second
    assert with_precisions_section(second, "## Reduced precisions\nnew\n") == second
    bare = with_precisions_section("# nnU-Net import\n", "## Reduced precisions\nx\n")
    assert bare == "# nnU-Net import\n\n## Reduced precisions\nx\n"
    assert with_precisions_section(bare, "## Reduced precisions\ny\n").endswith("precisions\ny\n")
