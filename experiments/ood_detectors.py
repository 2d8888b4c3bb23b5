"""Which out-of-distribution detector on the phenotype columns flags never-seen tumour types?

Compares candidate detectors on the tumour-type task, all on the phenotype columns and the
ground-truth features (each case rendered again from its seed, features on its true labels;
no segmentation, so the segmentation-uncertainty gate is not part of these rates), with
thresholds on 5-fold out-of-fold training rows at the nominal ``ood_quantile``:

* ``gaussian (committed)``: :func:`cerebrascan.classifiers.models.fit_ood_detector`;
* ``knn`` / ``class knn``: distance to the k-th nearest training row (``class``: of each
  class, the nearest counting), k = 3, 5, 10, after normal scores or robust z-scores, PCA
  whitened or not (:func:`fit_knn`);
* unions of the committed check and a kNN, each at half the false-alarm budget.

Reported per detector: the share flagged of the pipeline's held-out cohort and of its two
central-neurocytoma cohorts (all three looked at by earlier designs); ``--confirm`` adds two
cohorts no design looked at (a fresh held-out mix, seed 6100, 120 cases; fresh central
neurocytomas, seed 7600, 60 cases): use it once, after choosing. When the training cohort's
extension (cases 240-479 of its spec) is rendered, the committed check, the best kNN and
their union are also refitted on random 240-row draws of the 480.

Features are cached under ``--work-dir``; ``--render-only`` renders every cohort first (about
35 minutes on 2 cores for the 870 cases).

    .venv/bin/python experiments/ood_detectors.py --render-only
    .venv/bin/python experiments/ood_detectors.py [--confirm] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, QuantileTransformer, RobustScaler

from cerebrascan.classifiers.cohort import CohortSpec, sample_case
from cerebrascan.classifiers.cohort_files import read_cohort
from cerebrascan.classifiers.feature_stage import read_features
from cerebrascan.classifiers.models import feature_matrix, fit_ood_detector, ood_feature_names
from cerebrascan.classifiers.params import ClassifierParams, load_classifier_params
from cerebrascan.classifiers.tasks import task_rows

logger = logging.getLogger("ood_detectors")

Scorer = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]]


def _scaler(scaling: str, n: int, seed: int) -> Any:
    if scaling == "normal_scores":
        return QuantileTransformer(n_quantiles=n, output_distribution="normal", random_state=seed)
    clip = FunctionTransformer(np.clip, kw_args={"a_min": -8.0, "a_max": 8.0})
    return Pipeline([("robust", RobustScaler()), ("clip", clip)])


def fit_knn(
    x: npt.NDArray[np.float64],
    labels: list[str] | None,
    *,
    variance: float,
    quantile: float,
    seed: int,
    k: int,
    scaling: str,
    whiten: bool,
) -> Scorer:
    """A k-th-nearest-neighbour detector: imputation, ``scaling`` (normal scores, or robust
    z-scores clipped at 8: these keep a gap between two sites of one class open, which
    normal scores close), PCA to ``variance``, optionally whitened; the statistic is the
    distance to the k-th nearest training row (of each class, the nearest counting when
    ``labels`` are given), thresholded at the ``quantile`` of 5-fold out-of-fold rows."""
    y = np.zeros(len(x), dtype=int) if labels is None else np.unique(labels, return_inverse=True)[1]

    def fit(rows: npt.NDArray[np.float64]) -> Pipeline:
        return Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", _scaler(scaling, min(1000, len(rows)), seed)),
                ("pca", PCA(n_components=variance, svd_solver="full", random_state=seed)),
            ]
        ).fit(rows)

    def embed(pipeline: Pipeline, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        z = np.asarray(pipeline.transform(rows))
        return z / np.sqrt(pipeline[-1].explained_variance_)[None, :] if whiten else z

    def statistic(
        pipeline: Pipeline, reference: npt.NDArray[np.float64], classes: Any, rows: Any
    ) -> npt.NDArray[np.float64]:
        z = embed(pipeline, rows)
        distances = np.sqrt(((z[:, None, :] - reference[None, :, :]) ** 2).sum(axis=2))
        nearest = np.full(len(z), np.inf)
        for c in np.unique(classes):
            of_class = np.sort(distances[:, classes == c], axis=1)
            nearest = np.minimum(nearest, of_class[:, min(k, of_class.shape[1]) - 1])
        return nearest

    order = np.random.default_rng(seed).permutation(len(x))
    oof = np.empty(len(x))
    for fold in np.array_split(order, 5):
        train = np.setdiff1d(order, fold)
        pipeline = fit(x[train])
        oof[fold] = statistic(pipeline, embed(pipeline, x[train]), y[train], x[fold])
    threshold = float(np.quantile(oof, quantile))
    pipeline = fit(x)
    reference = embed(pipeline, x)
    return lambda rows: statistic(pipeline, reference, y, rows) > threshold


def truth_row(record: dict[str, Any]) -> dict[str, Any]:
    """Render one case from its seed and extract its features on the ground-truth labels
    only (no segmentation: the OOD check learns and is measured on these)."""
    from cerebrascan.atlas.mapping import structure_atlas_for
    from cerebrascan.classifiers.features import case_features
    from cerebrascan.phantoms.generator import PhantomParams, generate_case

    overrides: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in record.get("generator_overrides", {}).items()
    }
    params = PhantomParams(tumour_type=record["rendered_type"], **overrides)
    case = generate_case(int(record["seed"]), record["case_id"], params)
    atlas = structure_atlas_for(case.images["t1n"], case.affine, mode="never").atlas
    features = case_features(
        case.images, case.segmentation, case.affine, atlas, record["labels"]["age_years"]
    )
    return {
        "case_id": record["case_id"],
        "features": {k: (None if math.isnan(v) else v) for k, v in features.items()},
        "predicted_features": None,
    }


def truth_features(
    records: list[dict[str, Any]], path: Path, workers: int
) -> dict[str, dict[str, float]]:
    """Ground-truth features of ``records`` (rendered once, cached in ``path``)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        logger.warning("rendering %d cases into %s", len(records), path)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(truth_row, records, chunksize=2))
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return read_features(path)


def detectors(
    params: ClassifierParams, x: npt.NDArray[np.float64], labels: list[str], every: bool = True
) -> dict[str, Scorer]:
    """Each candidate fitted on ``x``: a function from rows to "flagged" (``every=False``:
    the committed one, the best kNN of the design table and their union)."""
    seed, variance = params.model.seed, params.model.ood_variance
    quantile = params.model.ood_quantile
    # a union's budget: each part at half the nominal false-alarm share
    half = 1.0 - (1.0 - quantile) / 2.0

    def gaussian(q: float) -> Scorer:
        fitted = fit_ood_detector(x, labels, variance=variance, quantile=q, seed=seed)
        return lambda r: fitted.scores(r) > fitted.threshold

    def knn(q: float, k: int, per_class: bool, scaling: str, whiten: bool) -> Scorer:
        return fit_knn(
            x,
            labels if per_class else None,
            variance=variance,
            quantile=q,
            seed=seed,
            k=k,
            scaling=scaling,
            whiten=whiten,
        )

    candidates: dict[str, Scorer] = {"gaussian (committed)": gaussian(quantile)}
    if not every:
        candidates["class knn k=5, normal_scores, whitened"] = knn(
            quantile, 5, True, "normal_scores", True
        )
        gaussian_half, knn_half = gaussian(half), knn(half, 5, True, "normal_scores", True)
        candidates["gaussian | class knn k=5, normal_scores, whitened"] = lambda r: (
            gaussian_half(r) | knn_half(r)
        )
        return candidates
    for scaling in ("normal_scores", "robust"):
        for whiten in (True, False):
            for k in (3, 5, 10):
                for per_class in (False, True):
                    name = (
                        f"{'class ' if per_class else ''}knn k={k}, {scaling}"
                        f"{', whitened' if whiten else ''}"
                    )
                    candidates[name] = knn(quantile, k, per_class, scaling, whiten)
    gaussian_half, knn_half = gaussian(half), knn(half, 5, True, "robust", False)
    candidates["gaussian | class knn k=5, robust"] = lambda r: gaussian_half(r) | knn_half(r)
    return candidates


COHORTS: dict[str, str] = {
    "train": "pipeline training cohort (seed 5000)",
    "test": "pipeline held-out mix (seed 6000), looked at by earlier designs",
    "shifted": "central neurocytomas (seed 7000), looked at by earlier designs",
    "shifted_confirmation": "central neurocytomas (seed 7300), looked at since 2026-11-27",
    "confirm_test": "fresh held-out mix (seed 6100), looked at only with --confirm",
    "confirm_shifted": "fresh central neurocytomas (seed 7600), looked at only with --confirm",
    "extension": "training cases 240-479 of the training spec (random training draws)",
}


def cohort_records(name: str, params: ClassifierParams, cohort_dir: Path) -> list[dict[str, Any]]:
    """Records of one of :data:`COHORTS`."""
    if name == "confirm_test":
        spec = CohortSpec(seed=6100, cases=120, type_probs=params.test.type_probs)
        return [sample_case(spec, k, f"CLS-CONFIRM-TEST-{k:05d}") for k in range(spec.cases)]
    if name == "confirm_shifted":
        spec = CohortSpec(seed=7600, cases=60, type_probs={"central_neurocytoma": 1.0})
        return [sample_case(spec, k, f"CLS-CONFIRM-SHIFTED-{k:05d}") for k in range(spec.cases)]
    if name == "extension":
        n = params.train.cases
        spec = CohortSpec(seed=params.train.seed, cases=2 * n, type_probs=params.train.type_probs)
        return [sample_case(spec, k, f"CLS-TRAIN-{k:05d}") for k in range(n, 2 * n)]
    return read_cohort(cohort_dir / name)


def rows_of(
    records: list[dict[str, Any]], features: dict[str, dict[str, float]]
) -> tuple[list[dict[str, float]], list[str]]:
    """Tumour-type rows and labels; never-seen types have no recorded task target, so every
    case with features counts there."""
    rows, labels, _ = task_rows("tumour_type", records, features)
    if rows:
        return rows, labels
    return [features[r["case_id"]] for r in records if r["case_id"] in features], []


def table(
    results: dict[str, dict[str, list[float]]], columns: list[str], sizes: dict[str, int]
) -> None:
    """Markdown table: detector x cohort, mean (range) of the flagged share."""
    print("| detector | " + " | ".join(f"{c} ({sizes[c]})" for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for detector, by_cohort in results.items():
        cells = []
        for name in columns:
            values = by_cohort[name]
            if len(values) == 1:
                cells.append(f"{values[0]:.1%}")
            else:
                cells.append(f"{np.mean(values):.1%} ({min(values):.0%}-{max(values):.0%})")
        print(f"| {detector} | " + " | ".join(cells) + " |")


def main() -> None:
    """Render what is missing, then print markdown tables of flag rates per detector."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--confirm", action="store_true", help="also the fresh cohorts")
    parser.add_argument("--render-only", action="store_true", help="render every cohort, stop")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cohorts", type=Path, default=Path("data/classifiers/cohorts"))
    parser.add_argument(
        "--work-dir", type=Path, default=Path("data/classifiers/experiments/ood_detectors")
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_classifier_params(Path("params.yaml"))
    records = {name: cohort_records(name, params, args.cohorts) for name in COHORTS}
    if args.render_only:
        for name in COHORTS:
            truth_features(records[name], args.work_dir / f"{name}.jsonl", params.workers)
        return
    evaluated = ["test", "shifted", "shifted_confirmation"]
    if args.confirm:
        evaluated += ["confirm_test", "confirm_shifted"]
    features = {
        name: truth_features(records[name], args.work_dir / f"{name}.jsonl", params.workers)
        for name in ["train", *evaluated]
    }
    rows, labels = rows_of(records["train"], features["train"])
    names = ood_feature_names(sorted({n for row in rows for n in row}))
    x = feature_matrix(rows, names)
    evaluation = {
        name: feature_matrix(rows_of(records[name], features[name])[0], names) for name in evaluated
    }
    sizes = {name: len(m) for name, m in evaluation.items()}
    print(f"tumour type, ground-truth features, {len(rows)} training rows, {len(names)} columns")
    results: dict[str, dict[str, list[float]]] = {}
    for detector, flags in detectors(params, x, labels).items():
        for name, matrix in evaluation.items():
            results.setdefault(detector, {})[name] = [float(np.mean(flags(matrix)))]
    table(results, evaluated, sizes)

    extension_path = args.work_dir / "extension.jsonl"
    if not extension_path.is_file():
        print(f"\n{extension_path} missing: --render-only first for random training draws")
        return
    extra_rows, extra_labels = rows_of(records["extension"], read_features(extension_path))
    x_all = np.concatenate([x, feature_matrix(extra_rows, names)])
    y_all = np.asarray(labels + extra_labels)
    rng = np.random.default_rng(0)
    draws: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        pick = rng.choice(len(x_all), size=len(x), replace=False)
        for detector, flags in detectors(
            params, x_all[pick], list(y_all[pick]), every=False
        ).items():
            for name, matrix in evaluation.items():
                rate = float(np.mean(flags(matrix)))
                draws.setdefault(detector, {}).setdefault(name, []).append(rate)
    print(
        f"\n{args.repeats} random draws of {len(x)} training rows from {len(x_all)}: mean (range)"
    )
    table(draws, evaluated, sizes)


if __name__ == "__main__":
    main()
