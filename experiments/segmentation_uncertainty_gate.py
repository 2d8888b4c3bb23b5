"""Calibrate the classifiers' segmentation-uncertainty gate on the pipeline's cohorts.

:func:`cerebrascan.classifiers.serving.segmentation_uncertainty` (voxels at 0.2-0.8 tumour
probability per voxel of the segmented tumour) tells a confident segmentation from one that
failed. This renders the cases of the pipeline's cohorts, segments them with the default model
as ``/analyze`` does (probabilities kept), and reports the statistic with the whole-tumour Dice:
its quantiles on the training cohort (the threshold is set there), and the share of held-out
and never-seen-type cases above candidate thresholds.

    .venv/bin/python experiments/segmentation_uncertainty_gate.py [--train-cases 120] \\
        [--out data/classifiers/experiments/segmentation_uncertainty.json]

About 2.5 s per case on 2 cores (2 workers).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cerebrascan.classifiers.cohort import read_cohort

logger = logging.getLogger("segmentation_uncertainty_gate")
_runner: Any = None


def _case(record: dict[str, Any]) -> dict[str, Any]:
    """Segment one cohort case and measure the statistic (worker process)."""
    global _runner
    from cerebrascan.classifiers.segmentation_quality import segmentation_uncertainty
    from cerebrascan.imaging.study import Study
    from cerebrascan.phantoms.generator import PhantomParams, generate_case
    from cerebrascan.segmentation import segment_study
    from cerebrascan.settings import Settings
    from runners.onnx_runner import OnnxSegmentationRunner
    from schemas.model_spec import ModelSpec

    settings = Settings()
    if _runner is None:
        model = Path("models/default")
        spec = ModelSpec.model_validate_json((model / "model_spec.json").read_text())
        _runner = OnnxSegmentationRunner(
            model / "model.onnx", spec, settings.runner.model_copy(update={"intra_op_threads": 1})
        )
    overrides = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in record.get("generator_overrides", {}).items()
    }
    case = generate_case(
        int(record["seed"]),
        record["case_id"],
        PhantomParams(tumour_type=record["rendered_type"], **overrides),
    )
    modalities = tuple(_runner.spec.modalities)
    images = np.stack([case.images[m] for m in modalities]).astype(np.float32)
    result = segment_study(
        Study(images=images, affine=case.affine, modalities=modalities),
        _runner,
        mirror_tta=False,
        keep_probabilities=True,
        min_component_ml=settings.runner.min_component_ml,
    )
    predicted, truth = result.labels > 0, case.segmentation > 0
    sizes = int(predicted.sum()) + int(truth.sum())
    return {
        "case_id": record["case_id"],
        "type": record["rendered_type"],
        "wt_dice": 2.0 * int((predicted & truth).sum()) / sizes if sizes else 1.0,
        "uncertainty": segmentation_uncertainty(result.probabilities, result.labels),
    }


def main() -> None:
    """Measure every cohort and print the calibration table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=Path, default=Path("data/classifiers/cohorts"))
    parser.add_argument("--train-cases", type=int, default=120)
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cohorts = {
        "train": read_cohort(args.cohorts / "train")[: args.train_cases],
        "test": read_cohort(args.cohorts / "test"),
        "shifted": read_cohort(args.cohorts / "shifted")
        + read_cohort(args.cohorts / "shifted_confirmation"),
    }
    rows: dict[str, list[dict[str, Any]]] = {}
    with ProcessPoolExecutor(max_workers=2) as pool:
        for name, records in cohorts.items():
            rows[name] = list(pool.map(_case, records, chunksize=2))
    train = np.asarray([r["uncertainty"] for r in rows["train"]], dtype=np.float64)
    threshold = float(np.quantile(train, args.quantile))
    print(f"train ({len(train)} cases): quantiles 50/90/99/max =", end=" ")
    print(" / ".join(f"{v:.3f}" for v in np.quantile(train, [0.5, 0.9, 0.99, 1.0])))
    print(f"threshold (train quantile {args.quantile}): {threshold:.3f}")
    print("| cohort | cases | flagged at threshold | at 0.8 | at 1.0 | at 1.2 | Dice of flagged |")
    print("|---|---|---|---|---|---|---|")
    for name, group in rows.items():
        values = np.asarray([r["uncertainty"] for r in group], dtype=np.float64)
        dice = np.asarray([r["wt_dice"] for r in group])
        flagged = values > threshold
        print(
            f"| {name} | {len(group)} | {flagged.mean():.1%} | {(values > 0.8).mean():.1%} "
            f"| {(values > 1.0).mean():.1%} | {(values > 1.2).mean():.1%} "
            f"| {np.median(dice[flagged]) if flagged.any() else float('nan'):.2f} |"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threshold": threshold, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
