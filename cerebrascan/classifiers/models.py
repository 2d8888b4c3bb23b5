"""Classifier pipelines, the out-of-distribution detector, their explanations (maths only).

* :func:`build_classifier`: median imputation (with missing-value indicators), standard
  scaling, L2 logistic regression, wrapped in 5-fold sigmoid probability calibration
  (``CalibratedClassifierCV``). A linear model keeps every prediction explainable: the
  contribution of a feature is its coefficient times its scaled value.
* :class:`OodDetector`: imputation, robust scaling, PCA; a feature vector is out of
  distribution when its Hotelling T^2, its PCA reconstruction residual or its most extreme
  single feature exceeds a threshold set on out-of-fold training rows. Plain scikit-learn
  objects plus numbers, so it saves with skops like the classifiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, RobustScaler, StandardScaler

_CLIP = 8.0


def _clip(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.clip(values, -_CLIP, _CLIP)


def build_classifier(c: float, seed: int) -> CalibratedClassifierCV:
    """An untrained calibrated classifier pipeline.

    Args:
        c: inverse L2 regularisation strength of the logistic regression.
        seed: seed of the calibration folds.
    """
    pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", add_indicator=True)),
            ("scale", StandardScaler()),
            ("clip", FunctionTransformer(np.clip, kw_args={"a_min": -_CLIP, "a_max": _CLIP})),
            ("classify", LogisticRegression(C=c, max_iter=5000)),
        ]
    )
    return CalibratedClassifierCV(
        pipeline, method="sigmoid", cv=StratifiedKFold(5, shuffle=True, random_state=seed)
    )


def feature_matrix(
    rows: Sequence[Mapping[str, float]], names: Sequence[str]
) -> npt.NDArray[np.float64]:
    """``(n, len(names))`` float matrix of feature dicts (missing names are NaN)."""
    return np.asarray(
        [[float(row.get(name, math.nan)) for name in names] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(names))


def contributions(
    model: CalibratedClassifierCV, x: npt.NDArray[np.float64], n_features: int
) -> npt.NDArray[np.float64]:
    """Per-class contribution of each input feature to the decision function, averaged over
    the calibration folds: ``coef * scaled value`` (indicator columns are left out).

    Args:
        model: a fitted :func:`build_classifier` model.
        x: ``(1, n_features)`` feature row.
        n_features: number of input features.

    Returns:
        ``(n_classes_or_1, n_features)`` contributions (binary models: one row, towards the
        positive class).
    """
    total: npt.NDArray[np.float64] | None = None
    folds = model.calibrated_classifiers_
    for fold in folds:
        pipeline: Pipeline = fold.estimator
        transformed = pipeline[:-1].transform(x)[0, :n_features]
        coef = np.asarray(pipeline[-1].coef_)[:, :n_features]
        part = coef * transformed[None, :]
        total = part if total is None else total + part
    assert total is not None
    return total / len(folds)


@dataclass
class OodDetector:
    """Out-of-distribution score of a feature vector against the training features.

    Three statistics of a row, each divided by its own threshold (the
    ``1 - (1 - quantile) / 3`` quantile of out-of-fold training rows, so that their union flags
    about ``1 - quantile`` of in-distribution rows): Hotelling T^2 per PCA component (an unusual
    combination of the main modes), the PCA reconstruction residual (variation the training
    never showed) and the largest absolute robust z-score of a single feature (one feature far
    outside its training range). The score is the largest ratio; above 1 is out of distribution.

    Attributes:
        transform: fitted imputer + robust scaler + PCA pipeline (no clipping).
        components: number of PCA components kept.
        statistic_thresholds: thresholds of T^2, residual and extreme z, in that order.
        threshold: 1.0 (scores are ratios to the statistic thresholds).
        quantile: the nominal in-distribution quantile.
    """

    transform: Pipeline
    components: int
    statistic_thresholds: tuple[float, float, float]
    threshold: float
    quantile: float

    def scores(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scores of rows ``x`` (higher: farther from the training data)."""
        statistics = _statistics(self.transform, x)
        ratios = statistics / np.asarray(self.statistic_thresholds)[None, :]
        return np.asarray(ratios.max(axis=1), dtype=np.float64)

    def to_state(self) -> dict[str, Any]:
        """The numbers (the pipeline is saved separately with skops)."""
        return {
            "components": self.components,
            "statistic_thresholds": list(self.statistic_thresholds),
            "threshold": self.threshold,
            "quantile": self.quantile,
        }


_Z_CAP = 1e3


def _fit_transform(x: npt.NDArray[np.float64], variance: float, seed: int) -> Pipeline:
    pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", RobustScaler(quantile_range=(10.0, 90.0))),
            ("clip", FunctionTransformer(np.clip, kw_args={"a_min": -_Z_CAP, "a_max": _Z_CAP})),
            ("pca", PCA(n_components=variance, svd_solver="full", random_state=seed)),
        ]
    )
    # the PCA sees values clipped at +-_CLIP so that a few extreme rows do not steer it
    pipeline[:-1].fit(x)
    pipeline[-1].fit(np.clip(pipeline[:-1].transform(x), -_CLIP, _CLIP))
    return pipeline


def _statistics(pipeline: Pipeline, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``(n, 3)``: T^2 per component, squared residual per feature, max |robust z|."""
    z = pipeline[:-1].transform(x)
    reduced = np.clip(z, -_CLIP, _CLIP)
    pca: PCA = pipeline[-1]
    projected = pca.transform(reduced)
    t2 = (projected**2 / pca.explained_variance_[None, :]).sum(axis=1) / pca.n_components_
    residual = ((reduced - pca.inverse_transform(projected)) ** 2).mean(axis=1)
    extreme = np.abs(z).max(axis=1)
    return np.stack([t2, residual, extreme], axis=1)


def fit_ood_detector(
    x: npt.NDArray[np.float64], *, variance: float, quantile: float, seed: int
) -> OodDetector:
    """Fit the detector on training rows and set its thresholds on out-of-fold statistics.

    Args:
        x: ``(n, p)`` training features (NaN allowed).
        variance: fraction of variance the PCA keeps.
        quantile: nominal share of in-distribution rows kept, e.g. 0.95.
        seed: fold and PCA seed.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    oof = np.empty((len(x), 3))
    for fold in np.array_split(order, 5):
        train = np.setdiff1d(order, fold)
        oof[fold] = _statistics(_fit_transform(x[train], variance, seed), x[fold])
    per_statistic = 1.0 - (1.0 - quantile) / 3.0
    thresholds = np.quantile(oof, per_statistic, axis=0)
    pipeline = _fit_transform(x, variance, seed)
    return OodDetector(
        transform=pipeline,
        components=int(pipeline[-1].n_components_),
        statistic_thresholds=(float(thresholds[0]), float(thresholds[1]), float(thresholds[2])),
        threshold=1.0,
        quantile=quantile,
    )
