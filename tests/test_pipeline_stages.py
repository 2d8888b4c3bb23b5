"""The DVC pipeline's stages, run through the CLI on a tiny configuration (real torch, MLflow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cerebrascan.cli import main
from cerebrascan.inputs.case_folder import read_phantom_tumour_type
from cerebrascan.phantoms.tumour_types import case_tumour_type
from cerebrascan.registry import resolve_model
from cerebrascan.settings import Settings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TINY_PARAMS = {
    "phantoms": {
        "train_seed": 11,
        "train_cases": 2,
        "test_seed": 12,
        "test_cases": 1,
        "type_probs": {"generic": 1.0, "meningioma": 1.0},
    },
    "model": {"features": [4, 8], "patch_size": [32, 32, 32], "target_spacing_mm": [3, 3, 3]},
    "train": {"iterations": 3, "batch_size": 1, "log_every": 1, "threads": 1},
    "evaluate": {"tile_step": 0.5, "mirror_tta": False},
}


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_stages_from_phantoms_to_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(TINY_PARAMS))
    state = tmp_path / "state"
    monkeypatch.setenv("CEREBRASCAN_DATA_DIR", str(state))
    model_dir = tmp_path / "model"
    base = ["pipeline", "--params", str(params)]
    _invoke([*base, "phantoms", "--out", str(tmp_path / "phantoms")])
    assert len(list((tmp_path / "phantoms" / "train").iterdir())) == 2
    # every case has the type its seed draws from the mix, recorded in truth.json
    for cohort, seed in (("train", 11), ("test", 12)):
        for index, folder in enumerate(sorted((tmp_path / "phantoms" / cohort).iterdir())):
            expected = case_tumour_type(seed, index, TINY_PARAMS["phantoms"]["type_probs"])
            assert read_phantom_tumour_type(folder) == expected
    _invoke(
        [
            *base,
            "train",
            "--cases",
            str(tmp_path / "phantoms/train"),
            "--out",
            str(tmp_path / "train"),
        ]
    )
    summary = json.loads((tmp_path / "train" / "train_summary.json").read_text())
    assert summary["iterations"] == 3 and summary["train_cases"] == 2
    output = _invoke(
        [*base, "export", "--train-dir", str(tmp_path / "train"), "--out", str(model_dir)]
    )
    assert "max |torch - onnxruntime|" in output
    _invoke(
        [
            *base,
            "evaluate",
            "--model-dir",
            str(model_dir),
            "--cases",
            str(tmp_path / "phantoms/test"),
            "--train-dir",
            str(tmp_path / "train"),
        ]
    )
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["held_out_cases"] == 1
    assert 0.0 <= metrics["mean"]["WT_dice"] <= 1.0
    test_type = read_phantom_tumour_type(next((tmp_path / "phantoms" / "test").iterdir()))
    assert test_type is not None
    assert list(metrics["by_tumour_type"]) == [test_type]
    assert metrics["by_tumour_type"][test_type]["WT_dice"] == metrics["mean"]["WT_dice"]
    card = (model_dir / "model_card.md").read_text()
    assert "phantom" in card.lower() and "research" in card.lower()
    assert f"| {test_type} | 1 |" in card and "meningioma 1" in card
    _invoke(
        [
            *base,
            "register",
            "--model-dir",
            str(model_dir),
            "--train-dir",
            str(tmp_path / "train"),
            "--record",
            str(tmp_path / "registered.json"),
        ]
    )
    resolved = resolve_model(Settings())
    assert resolved.version == "1"
    assert resolved.spec.patch_size == (32, 32, 32)
    # the training run holds the registered artefacts: lineage from registry to run
    assert json.loads((tmp_path / "registered.json").read_text())["version"] == "1"


def test_dvc_pipeline_definition_is_valid() -> None:
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent))
    assert dvc, "dvc is installed with the train extra"
    result = subprocess.run(
        [dvc, "dag", "--md"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for stage in ("phantoms", "train", "export", "evaluate", "register"):
        assert stage in result.stdout
