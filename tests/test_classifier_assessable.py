"""Classifier calibrations follow the segmentation model (issue 18, item 7): a classifier
answers "not assessable" when the served segmentation model is not the one its calibration was
measured on (``spec.json`` ``segmentation_model``), and every prediction says on what it was
calibrated (cohort, n, segmentation model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cerebrascan.classifiers import model_registry, serving
from cerebrascan.classifiers.model_registry import ensure_bundled_classifiers
from cerebrascan.classifiers.serving import calibrated_on, calibration_mismatch
from cerebrascan.pipeline import build_analyzer_host, onnx_md5
from cerebrascan.settings import Settings
from plugins.analyzer import SegmentationModelInfo
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink, study_inputs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ONNX = REPO / "models" / "default" / "model.onnx"
TASKS = ("tumour_type", "grade", "idh", "mgmt")
OTHER_MD5 = "0123456789abcdef" * 2


def _spec(task: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(
        (REPO / "models" / "classifiers" / task / "spec.json").read_text()
    )
    return spec


@pytest.mark.parametrize("task", TASKS)
def test_each_committed_classifier_records_the_default_model(task: str) -> None:
    spec = _spec(task)
    served = onnx_md5(DEFAULT_ONNX)
    assert served == hashlib.md5(DEFAULT_ONNX.read_bytes(), usedforsecurity=False).hexdigest()
    assert spec["segmentation_model"]["onnx_md5"] == served
    assert calibration_mismatch(spec, "cerebrascan-brats-unet", "1", served) is None
    reason = calibration_mismatch(spec, "other-unet", "7", OTHER_MD5)
    assert reason is not None and reason.startswith("not assessable")
    assert "models/default" in reason and "other-unet version 7" in reason
    assert "0123456789ab" in reason
    unreadable = calibration_mismatch(spec, "remote-unet", "2", None)
    assert unreadable is not None and "not readable" in unreadable
    note = calibrated_on(spec)
    n = sum(spec["train_class_counts"].values())
    assert f"n={n}" in note and "synthetic phantoms" in note
    assert f"models/default (ONNX MD5 {served[:12]})" in note


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """CEREBRASCAN_DATA_DIR pointing at a registry holding the bundled classifiers."""
    data_dir = tmp_path_factory.mktemp("assessable-registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CEREBRASCAN_DATA_DIR", str(data_dir))
        ensure_bundled_classifiers(Settings())
        yield data_dir
    model_registry._loaded.clear()
    serving.clear_cache()


def test_another_segmentation_model_makes_every_task_not_assessable(registry: Path) -> None:
    # any study with a tumour: the check comes before the atlas and the features
    segmentation = np.zeros((48, 48, 48), dtype=np.uint8)
    segmentation[14:34, 14:34, 14:34] = 2
    segmentation[18:30, 18:30, 18:30] = 3  # 8 mL of tumour at 1 mm
    images = np.random.default_rng(0).normal(100, 10, (4, 48, 48, 48)).astype(np.float32)
    settings = Settings(plugins=PluginSettings(entry_points=False))
    host = build_analyzer_host(
        settings,
        builtin_plugins=("plugins.builtin.classification", "plugins.builtin.radiogenomics"),
    )
    inputs = dataclasses.replace(
        study_inputs(segmentation, images=images, study_id="a" * 32),
        segmentation_model=SegmentationModelInfo("other-unet", "7", OTHER_MD5),
    )
    outcomes = host.run(inputs, artefacts=MemoryArtefactSink())
    for name in ("classification", "radiogenomics"):
        outcome = outcomes[name]
        assert outcome.status == "ok", outcome.error
        result = outcome.result
        assert result["assessable"] is False
        assert "calibrated on the segmentations of models/default" in result["reason"]
        assert result["features_ms"] is None  # refused before any feature was computed
        for prediction in result["predictions"]:
            assert prediction["assessable"] is False and prediction["probabilities"] == {}
            assert "other-unet version 7" in prediction["reason"]
    # radiogenomics stops at its precondition (the tumour type is not assessable) before
    # loading its models; the classification names each model's calibration
    for prediction in outcomes["classification"].result["predictions"]:
        assert "models/default" in prediction["calibrated_on"]


def test_the_served_default_model_keeps_its_classifiers_assessable(
    reported_study: dict[str, Any],
) -> None:
    """The session's study, analysed by the served default model: its predictions carry
    probabilities and say on what they were calibrated."""
    result = reported_study["analyzers"]["classification"]["result"]
    assert "calibrated on the segmentations" not in str(result["reason"])
    answered = [p for p in result["predictions"] if p["probabilities"]]
    assert answered, result
    for prediction in answered:
        assert "models/default" in prediction["calibrated_on"]
        assert "n=" in prediction["calibrated_on"]
