"""nnU-Net as a pipeline (issue #22 item 2), end to end on CPU.

Two small phantoms (averaged to a 3 mm grid) are converted to nnU-Net's raw format with
region labels, planned and preprocessed by ``nnUNetv2_plan_and_preprocess``, trained by the
project's short trainer (2 epochs x 5 iterations, 32^3 patches) through nnU-Net's own trainer
code, imported to ONNX, evaluated on the two session phantoms (on the same 3 mm grid),
registered, and the registered model then answers a study through the service's
``AnalysisPipeline``.

The stages run as subprocesses with exactly the commands of ``pipelines/nnunet/dvc.yaml`` (read
from it), in a scratch folder with its own ``params.yaml``; ``dvc repro`` itself is not run here
(it would copy the project), the stage file is checked with ``dvc stage list``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("nnunetv2")

from cerebrascan.training.nnunet_dataset import (
    REGIONS_CLASS_ORDER,
    brats_labels,
    downsample_case,
    progress_metrics,
    region_dataset_json,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGE_FILE = REPO_ROOT / "pipelines" / "nnunet" / "dvc.yaml"
STAGES = [
    "nnunet_convert",
    "nnunet_plan",
    "nnunet_train",
    "nnunet_import",
    "nnunet_evaluate",
    "nnunet_register",
]
MODEL_NAME = "cerebrascan-nnunet-e2e"


def test_downsample_averages_blocks_and_takes_majority_labels() -> None:
    images = np.arange(2 * 4 * 4 * 2, dtype=np.float32).reshape(2, 4, 4, 2)
    labels = np.zeros((4, 4, 2), dtype=np.uint8)
    labels[:2, :2, :] = 2
    labels[0, 0, 0] = 3  # a minority voxel in the first block
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    coarse, coarse_labels, coarse_affine = downsample_case(images, labels, affine, 2)
    assert coarse.shape == (2, 2, 2, 1) and coarse_labels.shape == (2, 2, 1)
    assert coarse[0, 0, 0, 0] == pytest.approx(images[0, :2, :2, :2].mean())
    assert coarse_labels[0, 0, 0] == 2 and coarse_labels[1, 1, 0] == 0
    # the coarse voxel (0, 0, 0) is the centre of the first 2x2x2 block
    np.testing.assert_allclose(coarse_affine[:3, 3], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(np.diag(coarse_affine)[:3], [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="factor must be >= 1, got 0"):
        downsample_case(images, labels, affine, 0)


def test_brats_2021_labels_are_renumbered_and_bad_labels_named() -> None:
    np.testing.assert_array_equal(brats_labels(np.array([0, 1, 2, 4]), "c"), [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"case c: segmentation labels \[5\]"):
        brats_labels(np.array([0, 5]), "c")
    with pytest.raises(ValueError, match="both label 3 and label 4"):
        brats_labels(np.array([3, 4]), "c")


def test_dataset_json_is_nnunet_region_based_brats() -> None:
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset = region_dataset_json(3, "test")
    manager = LabelManager(dataset["labels"], dataset["regions_class_order"])
    assert manager.has_regions
    # regions back to labels as nnU-Net does: ET inside TC inside WT
    regions = np.zeros((3, 4), dtype=bool)
    regions[0, 1:] = True  # WT on voxels 1..3
    regions[1, 2:] = True  # TC on 2..3
    regions[2, 3] = True  # ET on 3
    labels = np.zeros(4, dtype=np.uint8)
    for index, value in enumerate(REGIONS_CLASS_ORDER):
        labels[regions[index]] = value
    np.testing.assert_array_equal(labels, [0, 2, 1, 3])  # none, SNFH, NETC, ET


def test_progress_metrics_read_nnunet_logging() -> None:
    logging = {
        "train_losses": [0.9, 0.5],
        "val_losses": [0.8, 0.6],
        "mean_fg_dice": [0.1, 0.3],
        "ema_fg_dice": [0.1, 0.12],
        "dice_per_class_or_region": [[0.2, 0.1, 0.0], [0.4, 0.3, 0.2]],
        "lrs": [0.01, 0.005],
        "epoch_start_timestamps": [10.0, 14.0],
        "epoch_end_timestamps": [13.5, 16.0],
    }
    rows = progress_metrics(logging, ["whole tumor", "tumor core", "enhancing tumor"])
    assert ("val_loss", 0.6, 1) in rows
    assert ("pseudo_dice_tumor_core", 0.3, 1) in rows
    assert ("epoch_seconds", 2.0, 1) in rows
    assert len(rows) == 5 * 2 + 3 * 2 + 2


def test_stage_file_defines_the_nnunet_stages_apart_from_the_default_pipeline() -> None:
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent))
    assert dvc, "dvc is installed with the train extra"
    listed = subprocess.run(
        [dvc, "stage", "list", str(STAGE_FILE.relative_to(REPO_ROOT))],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    for stage in STAGES:
        assert f"pipelines/nnunet/dvc.yaml:{stage}" in listed.stdout
    # `dvc repro` (the root dvc.yaml) never starts an nnU-Net training
    root_stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert not [name for name in root_stages if name.startswith("nnunet")]


def _scratch_params(work: Path, train_cases: Path, test_cases: Path) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["nnunet"].update(
        cases=str(train_cases),
        test_cases=str(test_cases),
        dataset_id=502,
        dataset_name="CerebraScanE2E",
        model_name=MODEL_NAME,
    )
    # the official-metrics venv is found relative to the project, not this scratch folder
    params["evaluate"]["official_metrics"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def pipeline_run(
    tmp_path_factory: pytest.TempPathFactory, phantom_cases: list[Path]
) -> dict[str, Any]:
    """Every stage of pipelines/nnunet/dvc.yaml run in order in a scratch project folder."""
    from cerebrascan.phantoms.writer import write_cohort

    work = tmp_path_factory.mktemp("nnunet-pipeline")
    write_cohort(work / "train", seed=7310, n_cases=2, prefix="NNUNET")
    (work / "test").mkdir()
    for case in phantom_cases:  # held out: the session phantoms, never trained on
        (work / "test" / case.name).symlink_to(case, target_is_directory=True)
    _scratch_params(work, work / "train", work / "test")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    stages = yaml.safe_load(STAGE_FILE.read_text())["stages"]
    seconds: dict[str, float] = {}
    for name in STAGES:
        started = time.monotonic()
        result = subprocess.run(
            stages[name]["cmd"], shell=True, cwd=work, env=env,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds[name] = round(time.monotonic() - started, 1)
        assert result.returncode == 0, f"{name}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return {"work": work, "seconds": seconds}


@pytest.mark.slow
def test_converted_dataset_has_region_labels(pipeline_run: dict[str, Any]) -> None:
    import nibabel as nib

    raw = pipeline_run["work"] / "data/nnunet/nnUNet_raw/Dataset502_CerebraScanE2E"
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["labels"]["tumor core"] == [1, 3]
    assert dataset["regions_class_order"] == [2, 1, 3]
    assert dataset["numTraining"] == 2
    assert len(list((raw / "imagesTr").glob("*.nii.gz"))) == 2 * 4
    label = nib.load(sorted((raw / "labelsTr").glob("*.nii.gz"))[0])
    assert label.shape == (80, 80, 51)  # 240 x 240 x 155 averaged over 3^3 blocks
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_training_progress_is_tracked_in_mlflow(pipeline_run: dict[str, Any]) -> None:
    from cerebrascan.registry import client_for
    from cerebrascan.settings import Settings

    summary = json.loads((pipeline_run["work"] / "data/nnunet/train_summary.json").read_text())
    assert summary["folds"]["all"]["epochs"] == 2
    client = client_for(Settings())
    history = client.get_metric_history(summary["mlflow_run_id"], "fold_all/train_loss")
    assert sorted(m.step for m in history) == [0, 1]
    assert all(np.isfinite(m.value) for m in history)
    dice = client.get_metric_history(summary["mlflow_run_id"], "fold_all/pseudo_dice_tumor_core")
    assert sorted(m.step for m in dice) == [0, 1]
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["nnunet.trainer"] == "nnUNetTrainer_CerebraScanShort"


@pytest.mark.slow
def test_imported_model_is_region_based_and_evaluated(pipeline_run: dict[str, Any]) -> None:
    from schemas.model_spec import ModelSpec

    model = pipeline_run["work"] / "models/nnunet/model"
    spec = ModelSpec.model_validate_json((model / "model_spec.json").read_text())
    assert spec.output_kind == "sigmoid_regions"
    assert spec.regions == [[1, 2, 3], [1, 3], [3]]
    assert spec.regions_class_order == [2, 1, 3]
    assert spec.nnunet is not None and spec.nnunet.trainer == "nnUNetTrainer_CerebraScanShort"
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["held_out_cases"] == 2
    assert {c["case"] for c in metrics["per_case"]} == {"TEST-00000-000", "TEST-00001-000"}
    for region in ("WT", "TC", "ET"):
        assert 0.0 <= metrics["mean"][f"{region}_dice"] <= 1.0
    card = (model / "model_card.md").read_text()
    assert "Imported nnU-Net v2 model" in card and "## Held-out evaluation" in card


@pytest.mark.slow
def test_registered_model_answers_a_study(
    pipeline_run: dict[str, Any], phantom_cases: list[Path]
) -> None:
    from cerebrascan.inputs.case_folder import read_case
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model
    from cerebrascan.settings import Settings
    from schemas.analysis import AnalyzeOptions

    record = json.loads((pipeline_run["work"] / "data/nnunet/registered.json").read_text())
    # segmentation.trainer stays cerebrascan: registered beside the served model, not over it
    assert record["name"] == MODEL_NAME and record["alias"] == "champion"
    settings = Settings(model_name=MODEL_NAME, model_alias="champion")
    model = resolve_model(settings)
    assert model.version == record["version"] and model.spec.output_kind == "sigmoid_regions"
    # a held-out phantom on the 3 mm training grid (the convert stage wrote it)
    study = read_case(pipeline_run["work"] / "data/nnunet/heldout" / phantom_cases[0].name)
    assert study.shape == (80, 80, 51)
    analysis = AnalysisPipeline(settings, model).run(study, AnalyzeOptions())
    assert analysis.labels.shape == study.shape
    assert set(np.unique(analysis.labels)) <= {0, 1, 2, 3}
    volumes = analysis.response.volumes_ml.model_dump()
    assert set(volumes) == {"NETC", "SNFH", "ET", "TC", "WT"}
    # the regions nest as the labels were built from them
    assert volumes["WT"] >= volumes["TC"] >= volumes["ET"] >= 0
    assert analysis.response.model.version == record["version"]
    metrics = json.loads((pipeline_run["work"] / "models/nnunet/model/metrics.json").read_text())
    print("nnU-Net pipeline stage seconds:", pipeline_run["seconds"])
    print(
        "held-out mean Dice:",
        {r: round(metrics["mean"][f"{r}_dice"], 3) for r in "WT TC ET".split()},
    )
