"""The features stage of the classifier pipeline (``dvc.yaml`` stage ``cls_features``).

Each case of the cohorts is rendered again from its seed (bit-identical to the cohort's draws)
and its features are extracted twice (:func:`cerebrascan.classifiers.features.case_features`):
on the ground-truth labels, and on the segmentation that the default model predicts for it,
through the serving code path (:func:`cerebrascan.segmentation.segment_study`): that is what the
analyzers see at serving time. The SRI24 atlas is matched by voxel index (the phantoms lie on
the SRI24 grid). One JSON-lines file per cohort; NaN is written as null; a case whose predicted
segmentation is empty has ``predicted_features: null``. Each row also records the prediction's
whole-tumour Dice and its :func:`~cerebrascan.classifiers.serving.segmentation_uncertainty`.
Kept apart from :mod:`cerebrascan.classifiers.stages` so that training code changes do not
invalidate this, the slow stage.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cerebrascan.classifiers.cohort_files import read_cohort

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

FeatureSource = Literal["truth", "predicted"]
"""Which segmentation features are computed on: the phantom's ground truth, or the default
model's prediction (as served)."""

_runners: dict[Path, Any] = {}


def _segmentation_runner(model_dir: Path) -> Any:
    """The default model's ONNX Runtime runner, one per worker process (1 intra-op thread:
    the workers are the parallelism)."""
    if model_dir not in _runners:
        from cerebrascan.settings import Settings
        from runners.onnx_runner import OnnxSegmentationRunner
        from schemas.model_spec import ModelSpec

        settings = Settings()
        spec = ModelSpec.model_validate_json((model_dir / "model_spec.json").read_text())
        _runners[model_dir] = OnnxSegmentationRunner(
            model_dir / "model.onnx",
            spec,
            settings.runner.model_copy(update={"intra_op_threads": 1}),
        )
    return _runners[model_dir]


def _features_or_none(features: dict[str, float] | None) -> dict[str, float | None] | None:
    if features is None:
        return None
    return {k: (None if math.isnan(v) else v) for k, v in features.items()}


def _case_row(record: dict[str, Any], segmentation_model: Path) -> dict[str, Any]:
    """Render one case from its seed, segment it with ``segmentation_model`` and extract its
    features on both segmentations (runs in a worker process)."""
    from cerebrascan.phantoms.generator import PhantomParams, generate_case

    started = time.perf_counter()
    overrides: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in record.get("generator_overrides", {}).items()
    }
    params = PhantomParams(tumour_type=record["rendered_type"], **overrides)
    case = generate_case(int(record["seed"]), record["case_id"], params)
    logger.debug("%s: rendered in %.2f s", record["case_id"], time.perf_counter() - started)
    return segmented_case_row(
        record["case_id"],
        case.images,
        case.segmentation,
        case.affine,
        record["labels"]["age_years"],
        segmentation_model,
    )


def segmented_case_row(
    case_id: str,
    images: dict[str, Any],
    truth: Any,
    affine: Any,
    age_years: float | None,
    segmentation_model: Path,
    *,
    predict: bool = True,
) -> dict[str, Any]:
    """Segment one case with ``segmentation_model`` (the serving code path) and extract its
    features on the ground-truth labels and on the prediction: one row of a features file.

    Args:
        case_id: the case's id.
        images: modality -> (x, y, z) intensities, on the SRI24 grid (phantoms, BraTS cases).
        truth: the reference BraTS labels on the same grid.
        affine: 4x4 voxel-to-RAS affine.
        age_years: the patient's age, or None.
        segmentation_model: model folder (``model.onnx``, ``model_spec.json``).
        predict: False: no segmentation, features on the ground truth only (the row's
            predicted features are then null).
    """
    from cerebrascan.atlas.mapping import structure_atlas_for
    from cerebrascan.classifiers.features import case_features
    from cerebrascan.classifiers.segmentation_quality import segmentation_uncertainty
    from cerebrascan.inputs.study import Study
    from cerebrascan.segmentation import segment_study
    from cerebrascan.settings import Settings

    # phantoms and BraTS cases lie on the SRI24 grid: the atlas masks by voxel index
    atlas = structure_atlas_for(images["t1n"], affine, mode="never").atlas
    truth_features = case_features(images, truth, affine, atlas, age_years)
    if not predict:
        return {
            "case_id": case_id,
            "features": _features_or_none(truth_features),
            "predicted_features": None,
            "predicted_wt_dice": None,
            "segmentation_uncertainty": None,
        }
    started = time.perf_counter()
    runner = _segmentation_runner(segmentation_model)
    stacked = np.stack([images[m] for m in runner.spec.modalities]).astype(np.float32)
    segmentation = segment_study(
        Study(images=stacked, affine=affine, modalities=tuple(runner.spec.modalities)),
        runner,
        mirror_tta=False,
        keep_probabilities=True,
        min_component_ml=Settings().runner.min_component_ml,
    )
    predicted = segmentation.labels
    uncertainty = segmentation_uncertainty(segmentation.probabilities, predicted)
    segmented = time.perf_counter()
    predicted_features = (
        case_features(images, predicted, affine, atlas, age_years) if predicted.any() else None
    )
    overlap = int(((predicted > 0) & (truth > 0)).sum())
    sizes = int((predicted > 0).sum()) + int((truth > 0).sum())
    logger.debug(
        "%s: segmented in %.2f s, features in %.2f s",
        case_id,
        segmented - started,
        time.perf_counter() - segmented,
    )
    return {
        "case_id": case_id,
        "features": _features_or_none(truth_features),
        "predicted_features": _features_or_none(predicted_features),
        "predicted_wt_dice": 2.0 * overlap / sizes if sizes else 1.0,
        # null for an empty prediction (no ratio); compared with the serving setting at evaluation
        "segmentation_uncertainty": (
            uncertainty if uncertainty is not None and math.isfinite(uncertainty) else None
        ),
    }


def run_features_stage(
    workers: int, cohort_dir: Path, out_dir: Path, segmentation_model: Path
) -> None:
    """Features of every case of every cohort: ``out_dir/<cohort>.jsonl`` (deterministic).

    Args:
        workers: worker processes.
        cohort_dir: the cohort stage's folder.
        out_dir: where the JSON-lines files go.
        segmentation_model: model folder (``model.onnx``, ``model_spec.json``) whose
            predicted segmentation gives the ``predicted_features``.

    Raises:
        FileNotFoundError: the segmentation model folder lacks its ONNX file or spec.
    """
    for name in ("model.onnx", "model_spec.json"):
        if not (segmentation_model / name).is_file():
            raise FileNotFoundError(f"{segmentation_model / name} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    row_of = functools.partial(_case_row, segmentation_model=segmentation_model)
    for cohort in COHORTS:
        records = read_cohort(cohort_dir / cohort)
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(row_of, records, chunksize=2))
        path = out_dir / f"{cohort}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        logger.info(
            "features of %d %s cases in %.0f s (%d workers)",
            len(rows),
            cohort,
            time.perf_counter() - started,
            workers,
        )


def read_features(path: Path, source: FeatureSource = "truth") -> dict[str, dict[str, float]]:
    """Case id -> features of a JSON-lines file written by :func:`run_features_stage`.

    Args:
        path: the file.
        source: ``"truth"`` (features on the ground-truth labels) or ``"predicted"`` (on the
            default model's segmentation; cases whose prediction is empty are left out, see
            :func:`empty_predictions`).

    Raises:
        ValueError: ``source`` is neither.
    """
    if source not in ("truth", "predicted"):
        raise ValueError(f"source must be 'truth' or 'predicted', got {source!r}")
    key = "features" if source == "truth" else "predicted_features"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        row["case_id"]: {k: (math.nan if v is None else float(v)) for k, v in row[key].items()}
        for row in rows
        if row.get(key) is not None
    }


def failed_predictions(path: Path, max_uncertainty: float | None) -> list[str]:
    """Case ids whose predicted segmentation is empty or, when ``max_uncertainty`` is set, more
    uncertain than it: the analyzers answer "not assessable" for them."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        row["case_id"]
        for row in rows
        if row.get("predicted_features") is None
        or (
            max_uncertainty is not None
            and row.get("segmentation_uncertainty") is not None
            and row["segmentation_uncertainty"] > max_uncertainty
        )
    ]


def empty_predictions(path: Path) -> list[str]:
    """Case ids of a features file whose predicted segmentation was empty."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["case_id"] for row in rows if row.get("predicted_features") is None]
