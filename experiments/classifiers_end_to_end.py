"""The classifiers on the default model's *predicted* segmentation, next to the true one.

The classifiers are trained on features of the default model's predicted segmentation and
evaluated on both; at serving time they see the segmentation of the default model (its model
card names the tumour types it was trained on). This experiment renders fresh phantoms of
every tumour type (and of the never-seen central neurocytoma), segments them as ``/analyze``
does (the default ONNX model, the serving runner settings), computes the features on the
predicted and on the true segmentation (atlas by voxel index: the phantoms lie on the SRI24
grid), and assesses tumour type and grade with the committed models (``models/classifiers``).
Per tumour type it reports the whole-tumour Dice, how often each task answers (is not "not
assessable"), and the accuracy of the answers, on both segmentations. As served, a
segmentation above ``classifiers.max_segmentation_uncertainty`` is not assessable, as in the
analyzers.

    .venv/bin/python experiments/classifiers_end_to_end.py [--per-type 8] [--seed 9000] \\
        [--out data/classifiers/experiments/end_to_end.json]

About 20 s per case on 2 cores (rendering, segmentation, two feature extractions).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cerebrascan.atlas.mapping import structure_atlas_for
from cerebrascan.classifiers.cohort import CohortSpec, sample_case
from cerebrascan.classifiers.features import case_features
from cerebrascan.classifiers.model_registry import load_folder
from cerebrascan.classifiers.segmentation_quality import segmentation_uncertainty
from cerebrascan.classifiers.serving import assess
from cerebrascan.classifiers.tasks import class_label
from cerebrascan.inputs.study import Study
from cerebrascan.phantoms.contrasts import MODALITIES
from cerebrascan.phantoms.generator import PhantomParams, generate_case
from cerebrascan.phantoms.tumour_types import SHIFTED_TUMOUR_TYPES, TUMOUR_TYPES
from cerebrascan.segmentation import segment_study
from cerebrascan.settings import Settings
from runners.onnx_runner import OnnxSegmentationRunner
from schemas.model_spec import ModelSpec

logger = logging.getLogger("classifiers_end_to_end")
TASKS = ("tumour_type", "grade")


def whole_tumour_dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the whole tumour (any label > 0)."""
    a, b = predicted > 0, truth > 0
    denominator = int(a.sum()) + int(b.sum())
    return 1.0 if denominator == 0 else 2.0 * int((a & b).sum()) / denominator


def main() -> None:
    """Run the cases and print a markdown table per tumour type."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-type", type=int, default=8)
    parser.add_argument("--seed", type=int, default=9000)
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--classifiers", type=Path, default=Path("models/classifiers"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = Settings()
    spec = ModelSpec.model_validate_json((args.model / "model_spec.json").read_text())
    runner = OnnxSegmentationRunner(
        args.model / "model.onnx", spec, settings.runner, settings.data_dir / "engine-cache"
    )
    classifiers = {
        task: load_folder(args.classifiers / task, task=task, name=task, version="local")
        for task in TASKS
    }
    rows: list[dict[str, Any]] = []
    for offset, tumour_type in enumerate((*TUMOUR_TYPES, *SHIFTED_TUMOUR_TYPES)):
        cohort = CohortSpec(
            seed=args.seed + 100 * offset,
            cases=args.per_type,
            type_probs={tumour_type: 1.0},
            label_noise={"tumour_type": 0.0, "idh": 0.0, "mgmt": 0.0},
        )
        for index in range(args.per_type):
            record = sample_case(cohort, index, f"E2E-{tumour_type}-{index:03d}")
            clock = time.perf_counter()
            case = generate_case(
                int(record["seed"]), record["case_id"], PhantomParams(tumour_type=tumour_type)
            )
            images = np.stack([case.images[m] for m in MODALITIES]).astype(np.float32)
            segmentation = segment_study(
                Study(images=images, affine=case.affine, modalities=tuple(MODALITIES)),
                runner,
                mirror_tta=settings.runner.mirror_tta,
                keep_probabilities=True,
                min_component_ml=settings.runner.min_component_ml,
            )
            predicted = segmentation.labels
            uncertainty = segmentation_uncertainty(segmentation.probabilities, predicted)
            limit = settings.classifiers.max_segmentation_uncertainty
            failed = uncertainty is not None and limit is not None and uncertainty > limit
            atlas = structure_atlas_for(case.images["t1n"], case.affine, mode="never").atlas
            row: dict[str, Any] = {
                "case": record["case_id"],
                "tumour_type": tumour_type,
                "wt_dice": whole_tumour_dice(predicted, case.segmentation),
                "segmentation_uncertainty": uncertainty,
            }
            for source, labels in (("truth", case.segmentation), ("predicted", predicted)):
                if not (labels > 0).any() or (source == "predicted" and failed):
                    # as the analyzers: an empty or failed segmentation is not assessable
                    reason = "empty" if not (labels > 0).any() else "segmentation failed"
                    row[source] = {task: {"assessable": False, "reason": reason} for task in TASKS}
                    continue
                features = case_features(
                    case.images, labels, case.affine, atlas, record["labels"]["age_years"]
                )
                row[source] = {}
                for task in TASKS:
                    answer = assess(
                        classifiers[task],
                        features,
                        threshold_scale=settings.classifiers.ood_threshold_scale,
                        top_features=0,
                    )
                    target = (
                        record["labels"]["tumour_type"]
                        if task == "tumour_type"
                        else class_label("grade", record["labels"]["high_grade"])
                    )
                    row[source][task] = {
                        "assessable": answer.assessable,
                        "label": answer.label,
                        "correct": answer.assessable and answer.label == target,
                        "ood_score": answer.ood_score,
                    }
            row["seconds"] = round(time.perf_counter() - clock, 1)
            logger.info(
                "%s: WT Dice %.3f, %s",
                record["case_id"],
                row["wt_dice"],
                {s: {t: row[s][t].get("label") for t in TASKS} for s in ("truth", "predicted")},
            )
            rows.append(row)
    print_table(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


def _share(values: list[bool]) -> str:
    return f"{np.mean(values):.0%}" if values else "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Markdown table: per type, answer rates and accuracy of answers on both segmentations."""
    header = ["type", "cases", "WT Dice"]
    for task in TASKS:
        for source in ("truth", "predicted"):
            header += [f"{task} answers ({source})", f"{task} correct when answered ({source})"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for tumour_type in dict.fromkeys(r["tumour_type"] for r in rows):
        group = [r for r in rows if r["tumour_type"] == tumour_type]
        cells = [tumour_type, str(len(group)), f"{np.median([r['wt_dice'] for r in group]):.2f}"]
        for task in TASKS:
            for source in ("truth", "predicted"):
                answers = [r[source][task] for r in group]
                answered = [a for a in answers if a["assessable"]]
                cells += [
                    _share([a["assessable"] for a in answers]),
                    _share([a["correct"] for a in answered]),
                ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
