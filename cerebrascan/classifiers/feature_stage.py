"""The features stage of the classifier pipeline (``dvc.yaml`` stage ``cls_features``).

Each case of the cohorts is rendered again from its seed (bit-identical to the cohort's draws)
and its features are extracted on the ground-truth labels
(:func:`cerebrascan.classifiers.features.case_features`), with the SRI24 atlas by voxel index
(the phantoms lie on the SRI24 grid). One JSON-lines file per cohort; NaN is written as null.
Kept apart from :mod:`cerebrascan.classifiers.pipeline` so that training code changes do not
invalidate this, the slow stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from cerebrascan.classifiers.cohort import read_cohort

logger = logging.getLogger(__name__)

COHORTS: tuple[str, ...] = (
    "train",
    "test",
    "shifted",
    "shifted_protocol",
    "shifted_confirmation",
)
"""Training, held-out, an unseen tumour type, the held-out mix on a degraded protocol, and a
second unseen-type cohort that confirms the OOD rate."""


def _case_row(record: dict[str, Any]) -> dict[str, Any]:
    """Render one case from its seed and extract its features (runs in a worker process)."""
    from cerebrascan.atlas_registration import structure_atlas_for
    from cerebrascan.classifiers.features import case_features
    from cerebrascan.phantoms.generator import PhantomParams, generate_case

    started = time.perf_counter()
    overrides = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in record.get("generator_overrides", {}).items()
    }
    params = PhantomParams(tumour_type=record["rendered_type"], **overrides)
    case = generate_case(int(record["seed"]), record["case_id"], params)
    rendered = time.perf_counter()
    # phantoms lie on the SRI24 grid (small warp): the atlas masks by voxel index
    atlas = structure_atlas_for(case.images["t1n"], case.affine, mode="never").atlas
    features = case_features(
        case.images, case.segmentation, case.affine, atlas, record["labels"]["age_years"]
    )
    logger.debug(
        "%s: rendered in %.2f s, features in %.2f s",
        record["case_id"],
        rendered - started,
        time.perf_counter() - rendered,
    )
    return {
        "case_id": record["case_id"],
        "features": {k: (None if math.isnan(v) else v) for k, v in features.items()},
    }


def run_features_stage(workers: int, cohort_dir: Path, out_dir: Path) -> None:
    """Features of every case of every cohort: ``out_dir/<cohort>.jsonl`` (deterministic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for cohort in COHORTS:
        records = read_cohort(cohort_dir / cohort)
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_case_row, records, chunksize=2))
        path = out_dir / f"{cohort}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        logger.info(
            "features of %d %s cases in %.0f s (%d workers)",
            len(rows),
            cohort,
            time.perf_counter() - started,
            workers,
        )


def read_features(path: Path) -> dict[str, dict[str, float]]:
    """Case id -> features of a JSON-lines file written by :func:`run_features_stage`."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        row["case_id"]: {
            k: (math.nan if v is None else float(v)) for k, v in row["features"].items()
        }
        for row in rows
    }
