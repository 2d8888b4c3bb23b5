"""The classifier pipeline's features stage: features on the true and the predicted segmentation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cerebrascan.classifiers.cohort import CohortSpec, sample_case
from cerebrascan.classifiers.feature_stage import _case_row, empty_predictions, read_features

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


def test_a_case_row_carries_features_on_both_segmentations() -> None:
    spec = CohortSpec(seed=4242, cases=1, type_probs={"glioma": 1.0})
    record = sample_case(spec, 0, "CLS-FEATURE-STAGE-00000")
    row = _case_row(record, segmentation_model=DEFAULT_MODEL)
    assert row["case_id"] == record["case_id"]
    truth, predicted = row["features"], row["predicted_features"]
    assert predicted is not None and set(predicted) == set(truth)
    # the default model segments glioma phantoms well: the two feature sets agree on volume
    assert row["predicted_wt_dice"] > 0.8
    truth_ml = math.exp(truth["WT_log_volume_ml"])
    predicted_ml = math.exp(predicted["WT_log_volume_ml"])
    assert abs(predicted_ml - truth_ml) / truth_ml < 0.25
    # but they are computed on different masks, not copied
    assert predicted["WT_log_volume_ml"] != truth["WT_log_volume_ml"]


def test_read_features_by_source_leaves_out_empty_predictions(tmp_path: Path) -> None:
    rows = [
        {"case_id": "a", "features": {"x": 1.0, "y": None}, "predicted_features": {"x": 2.0}},
        {"case_id": "b", "features": {"x": 3.0, "y": 4.0}, "predicted_features": None},
    ]
    path = tmp_path / "cohort.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truth = read_features(path)
    assert set(truth) == {"a", "b"} and math.isnan(truth["a"]["y"])
    assert read_features(path, "predicted") == {"a": {"x": 2.0}}
    assert empty_predictions(path) == ["b"]
    with pytest.raises(ValueError, match="'groundtruth'"):
        read_features(path, "groundtruth")  # type: ignore[arg-type]
