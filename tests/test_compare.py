"""``cerebrascan models compare``: two registry versions on the same held-out phantom cases.

Version 1 is the bundled default model; version 2 the same network with the enhancing-tumour
logit's bias raised (a real, different ONNX file: more voxels called ET). Both are registered
under a name of their own so the session's default model and its aliases stay untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from cerebrascan.cli import main
from cerebrascan.inputs.case_folder import modality_path, read_labels
from cerebrascan.registry import client_for, register_model_folder, version_by_alias
from cerebrascan.settings import Settings
from cerebrascan.training.compare import COMPARE_EXPERIMENT, CompareError, parse_model_ref
from cerebrascan.training.evaluate import mean_metrics, official_card_section
from cerebrascan.training.metrics import paired_bootstrap

NAME = "compare-test-segmentation"
ET_CHANNEL = 3


def _crop_case(source: Path, root: Path, size: int = 72) -> Path:
    """A copy of a phantom case cropped to ``size``^3 voxels around its tumour (fast to run)."""
    labels = read_labels(source)
    centre = np.round(np.argwhere(labels > 0).mean(axis=0)).astype(int)
    low = np.clip(centre - size // 2, 0, np.array(labels.shape) - size)
    box = tuple(slice(int(a), int(a) + size) for a in low)
    folder = root / source.name
    folder.mkdir(parents=True)
    for modality in ("t1n", "t1c", "t2w", "t2f", "seg"):
        image = nib.load(str(modality_path(source, modality)))
        nib.save(image.slicer[box], str(folder / f"{source.name}-{modality}.nii.gz"))
    return folder


def _et_eager_model(bundled: Path, folder: Path) -> Path:
    shutil.copytree(bundled, folder)
    model = onnx.load(str(folder / "model.onnx"))
    last_conv = [node for node in model.graph.node if node.op_type == "Conv"][-1]
    bias = next(i for i in model.graph.initializer if i.name == last_conv.input[2])
    values = numpy_helper.to_array(bias).copy()
    values[ET_CHANNEL] += 3.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(folder / "model.onnx"))
    return folder


@pytest.fixture(scope="module")
def held_out(phantom_cases: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("held-out")
    for case in phantom_cases:
        _crop_case(case, root)
    return root


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    settings = Settings()
    first = register_model_folder(settings, settings.bundled_model_dir, name=NAME, alias="baseline")
    changed = _et_eager_model(settings.bundled_model_dir, tmp_path_factory.mktemp("v2") / "model")
    second = register_model_folder(settings, changed, name=NAME, alias="challenger")
    return first, second


def test_compare_prints_paired_differences_and_logs_one_mlflow_run(
    held_out: Path, two_versions: tuple[str, str]
) -> None:
    first, second = two_versions
    client = client_for(Settings())
    baseline_before = version_by_alias(client, NAME, "baseline")
    result = CliRunner().invoke(
        main,
        ["models", "compare", f"{NAME}@{first}", f"{NAME}@challenger", "--cases", str(held_out)],
    )
    assert result.exit_code == 0, result.output
    assert f"A = {NAME} version {first}, B = {NAME} version {second}, 2 case(s)" in result.output
    experiment = client.get_experiment_by_name(COMPARE_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model_a_version"] == first
    assert run.data.params["model_b_version"] == second
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "comparison.json")).read_text()
    )
    rows = {row["metric"]: row for row in table["rows"]}
    # global and lesion-wise (official) figures side by side, per region
    for region in ("WT", "TC", "ET"):
        for suffix in ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm"):
            assert f"{region}_{suffix}" in rows, sorted(rows)
    # the ET-eager version calls more enhancing tumour: its ET Dice moves
    et = rows["ET_dice"]
    assert et["difference"] != 0.0
    assert et["low"] <= et["difference"] <= et["high"]
    a_cases, b_cases = table["per_case"].values()
    assert [c["case"] for c in a_cases] == [c["case"] for c in b_cases] == table["cases"]
    assert et["a"] == pytest.approx(np.mean([c["ET_dice"] for c in a_cases]))
    # the evaluate stage's means of the same figures make the model card's official table
    card = official_card_section(mean_metrics(a_cases))
    assert f"| ET | {et['a']:.3f} |" in card and "lesion-wise HD95" in card
    assert run.data.metrics["ET_dice.difference"] == pytest.approx(et["difference"])
    assert f"| ET_dice | 2 | {et['a']:.4f} | {et['b']:.4f} | {et['difference']:+.4f} |" in (
        result.output
    )
    # promotion is not touched
    assert version_by_alias(client, NAME, "baseline").version == baseline_before.version


def test_compare_names_a_reference_that_is_not_registered(held_out: Path) -> None:
    result = CliRunner().invoke(
        main, ["models", "compare", f"{NAME}@no-such-alias", f"{NAME}@1", "--cases", str(held_out)]
    )
    assert result.exit_code == 1
    assert f"{NAME}@no-such-alias: not in the registry" in result.output
    with pytest.raises(CompareError, match="not NAME@VERSION"):
        parse_model_ref("no-at-sign")


def test_paired_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    first = [0.80, 0.85, 0.90, 0.70, 0.95]
    second = [0.82, 0.90, 0.91, 0.78, 0.96]
    one = paired_bootstrap(first, second, seed=3)
    assert one == paired_bootstrap(first, second, seed=3)
    assert one["mean_difference"] == pytest.approx(0.034)
    assert 0.0 < one["low"] <= one["mean_difference"] <= one["high"] <= 0.08
    identical = paired_bootstrap(first, first)
    assert identical == {"mean_difference": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap(first, second[:2])
