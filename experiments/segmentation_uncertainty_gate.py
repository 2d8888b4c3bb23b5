"""Calibrate the classifiers' segmentation-uncertainty gate on the pipeline's cohorts.

:func:`cerebrascan.classifiers.segmentation_quality.segmentation_uncertainty` (voxels at
0.2-0.8 tumour probability per voxel of the segmented tumour) tells a confident segmentation
from one that failed. The features stage (``dvc repro cls_features``) records it, with the
prediction's whole-tumour Dice, for every case it segments with the default model. This reads
those records and reports the statistic's quantiles on the training cohort (the threshold is set
there) and the share of held-out and never-seen-type cases above candidate thresholds. An empty
prediction counts as infinitely uncertain.

    .venv/bin/python experiments/segmentation_uncertainty_gate.py [--train-cases 120]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cerebrascan.settings import Settings


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Case id, Dice and uncertainty of every case of a features file."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {
            "case_id": row["case_id"],
            "wt_dice": row["predicted_wt_dice"],
            "uncertainty": (
                math.inf
                if row.get("segmentation_uncertainty") is None
                else row["segmentation_uncertainty"]
            ),
        }
        for row in rows
    ]


def main() -> None:
    """Print the calibration table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("data/classifiers/features"))
    parser.add_argument("--train-cases", type=int, default=120)
    parser.add_argument(
        "--limit",
        type=float,
        default=None,
        help="the limit to report on (default: classifiers.max_segmentation_uncertainty)",
    )
    args = parser.parse_args()
    if args.limit is None:
        args.limit = Settings().classifiers.max_segmentation_uncertainty
    rows = {
        "train": read_rows(args.features / "train.jsonl")[: args.train_cases],
        "test": read_rows(args.features / "test.jsonl"),
        "shifted": read_rows(args.features / "shifted.jsonl")
        + read_rows(args.features / "shifted_confirmation.jsonl"),
    }
    train = np.asarray([r["uncertainty"] for r in rows["train"]], dtype=np.float64)
    dice = np.asarray([r["wt_dice"] for r in rows["train"]])
    good = train[dice >= 0.7]
    print(f"train ({len(train)} cases): median {np.median(train):.3f}")
    print(f"largest value of a well-segmented (Dice >= 0.7) training case: {good.max():.3f}")
    print(f"training failures (Dice < 0.5): {np.sort(train[dice < 0.5]).round(2).tolist()}")
    limits = (0.8, 0.9, 1.0, 1.2)
    print(
        "| cohort | cases | "
        + " | ".join(f"above {limit}" for limit in limits)
        + f" | median Dice above {args.limit} | Dice < 0.5 above {args.limit} |"
    )
    print("|---|---|" + "---|" * (len(limits) + 2))
    for name, group in rows.items():
        values = np.asarray([r["uncertainty"] for r in group], dtype=np.float64)
        group_dice = np.asarray([r["wt_dice"] for r in group])
        above = values > args.limit
        failed = group_dice < 0.5
        print(
            f"| {name} | {len(group)} | "
            + " | ".join(f"{(values > limit).mean():.1%}" for limit in limits)
            + f" | {np.median(group_dice[above]) if above.any() else float('nan'):.2f} "
            f"| {int((above & failed).sum())} of {int(failed.sum())} |"
        )


if __name__ == "__main__":
    main()
