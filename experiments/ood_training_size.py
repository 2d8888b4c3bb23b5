"""Does the OOD check catch more never-seen tumour types with more training cases?

The classifiers' out-of-distribution check (:func:`cerebrascan.classifiers.models.
fit_ood_detector`) is fitted on the training cohort (240 cases by default). This experiment
refits it, with the pipeline's settings, on random subsets of the training cohort and on the
training cohort extended to twice its size (cases 240-479 of the same cohort spec: the first
240 are exactly the pipeline's, since every case is seeded by the cohort seed and its index),
and reports, per training size:

* the share of held-out cases flagged (the ``test`` cohort, in distribution);
* the share of the two never-seen-type cohorts flagged (``shifted`` + ``shifted_confirmation``,
  central neurocytomas), at the detector's own threshold;
* the same share at thresholds that flag exactly 5 % and 10 % of held-out cases, which takes
  the calibration of the threshold out of the comparison.

Needs the pipeline's cohorts and features (``dvc repro cls_features``). The 240 extra cases are
rendered once (about 4 minutes on 2 cores) and kept under ``--work-dir``.

    .venv/bin/python experiments/ood_training_size.py [--task tumour_type] [--repeats 10]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cerebrascan.classifiers.cohort import CohortSpec, sample_case
from cerebrascan.classifiers.cohort_files import read_cohort
from cerebrascan.classifiers.feature_stage import _case_row, read_features
from cerebrascan.classifiers.models import feature_matrix, fit_ood_detector, ood_feature_names
from cerebrascan.classifiers.params import ClassifierParams, load_classifier_params
from cerebrascan.classifiers.tasks import task_rows

logger = logging.getLogger("ood_training_size")


def extension_features(
    params: ClassifierParams, extra: int, work_dir: Path, workers: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Records and features of training cases ``cases .. cases + extra - 1`` (cached)."""
    spec = CohortSpec(
        seed=params.train.seed,
        cases=params.train.cases + extra,
        type_probs=params.train.type_probs,
    )
    records = [
        sample_case(spec, k, f"CLS-TRAIN-{k:05d}")
        for k in range(params.train.cases, params.train.cases + extra)
    ]
    path = work_dir / f"train_{params.train.seed}_{params.train.cases}_{extra}.jsonl"
    if not path.is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        logger.warning("rendering %d extra training cases into %s", extra, path)
        row_of = functools.partial(_case_row, segmentation_model=Path("models/default"))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(row_of, records, chunksize=2))
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return records, read_features(path)


def flag_rates(
    task: str,
    params: ClassifierParams,
    train: tuple[list[dict[str, float]], list[str]],
    held_out: list[dict[str, float]],
    shifted: list[dict[str, float]],
) -> dict[str, float]:
    """Flag rates of one detector fitted on ``train`` (feature rows, class labels)."""
    rows, labels = train
    names = ood_feature_names(sorted({n for row in rows for n in row}))
    detector = fit_ood_detector(
        feature_matrix(rows, names),
        labels,
        variance=params.model.ood_variance,
        quantile=params.model.ood_quantile,
        seed=params.model.seed,
    )
    held_out_scores = detector.scores(feature_matrix(held_out, names))
    shifted_scores = detector.scores(feature_matrix(shifted, names))
    rates = {
        "held_out": float(np.mean(held_out_scores > detector.threshold)),
        "shifted": float(np.mean(shifted_scores > detector.threshold)),
    }
    for share in (0.05, 0.10):
        threshold = np.quantile(held_out_scores, 1.0 - share)
        rates[f"shifted_at_{share:.0%}"] = float(np.mean(shifted_scores > threshold))
    return rates


def _mean_and_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{np.mean(values):.1%} ({min(values):.0%}-{max(values):.0%})"


def main() -> None:
    """Print a markdown table of flag rates per training size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="tumour_type")
    parser.add_argument("--repeats", type=int, default=10, help="random subsets per size")
    parser.add_argument("--cohorts", type=Path, default=Path("data/classifiers/cohorts"))
    parser.add_argument("--features", type=Path, default=Path("data/classifiers/features"))
    parser.add_argument(
        "--work-dir", type=Path, default=Path("data/classifiers/experiments/ood_training_size")
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_classifier_params(Path("params.yaml"))
    train_records = read_cohort(args.cohorts / "train")
    train_features = read_features(args.features / "train.jsonl")
    extra_records, extra_features = extension_features(
        params, params.train.cases, args.work_dir, params.workers
    )
    rows, labels, _ = task_rows(
        args.task, train_records + extra_records, {**train_features, **extra_features}
    )
    held_out, _, _ = task_rows(
        args.task,
        read_cohort(args.cohorts / "test"),
        read_features(args.features / "test.jsonl"),
    )
    shifted = [
        row
        for cohort in ("shifted", "shifted_confirmation")
        for row in read_features(args.features / f"{cohort}.jsonl").values()
    ]
    pipeline_rows = len(task_rows(args.task, train_records, train_features)[0])
    sizes = sorted({pipeline_rows // 2, 3 * pipeline_rows // 4, pipeline_rows})
    sizes.append(3 * len(rows) // 4)
    print(
        f"task {args.task}: {len(held_out)} held-out cases, {len(shifted)} never-seen-type "
        f"cases; training rows drawn from {len(rows)} (the pipeline's {pipeline_rows} first)"
    )
    print(
        "| training rows | subsets | held-out flagged | never-seen flagged "
        "| never-seen at 5 % held-out | never-seen at 10 % held-out |"
    )
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    plans: list[tuple[str, list[npt.NDArray[np.int64]]]] = [
        (
            f"{size} (random subsets of {len(rows)})",
            [rng.choice(len(rows), size, replace=False) for _ in range(args.repeats)],
        )
        for size in sizes
    ]
    plans += [
        (f"{pipeline_rows} (the pipeline's)", [np.arange(pipeline_rows)]),
        (f"{len(rows)} (all)", [np.arange(len(rows))]),
    ]
    for label, subsets in plans:
        results = [
            flag_rates(
                args.task,
                params,
                ([rows[i] for i in subset], [labels[i] for i in subset]),
                held_out,
                shifted,
            )
            for subset in subsets
        ]
        cells = [_mean_and_range([r[key] for r in results]) for key in results[0]]
        print(f"| {label} | {len(subsets)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
