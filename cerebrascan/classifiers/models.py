"""Classifier pipelines, the out-of-distribution detector, their explanations (maths only).

* :func:`build_classifier`: median imputation (with missing-value indicators), standard
  scaling, L2 logistic regression, wrapped in 5-fold sigmoid probability calibration
  (``CalibratedClassifierCV``). A linear model keeps every prediction explainable: the
  contribution of a feature is its coefficient times its scaled value.
* :class:`OodDetector`: on the phenotype columns (:func:`ood_feature_names`): imputation,
  normal scores, PCA; a feature vector is out of distribution when its Hotelling T^2, its PCA
  reconstruction residual or its distance to the nearest training class exceeds a threshold
  set on out-of-fold training rows. Plain scikit-learn
  objects plus numbers, so it saves with skops like the classifiers.
"""

from __future__ import annotations

import math
import re
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
from sklearn.preprocessing import FunctionTransformer, QuantileTransformer, StandardScaler

_CLIP = 8.0


def build_classifier(c: float, seed: int, folds: int = 5) -> CalibratedClassifierCV:
    """An untrained calibrated classifier pipeline.

    Args:
        c: inverse L2 regularisation strength of the logistic regression.
        seed: seed of the calibration folds.
        folds: calibration folds (stratified: each class needs as many cases).
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
        pipeline, method="sigmoid", cv=StratifiedKFold(folds, shuffle=True, random_state=seed)
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


#: Feature families the OOD check watches: where the tumour is, what it is made of, how big it
#: is and the median signal of each sub-region in each contrast -- the phenotype a reader types a
#: tumour by. Texture statistics are left to the classifiers: hundreds of noisy columns dilute
#: any distance (with all 380 columns an unseen type was flagged 3 % of the time, with these
#: ~47 about 87 %).
_OOD_FEATURE_PATTERN = re.compile(
    r"^(location_.*|fraction_.*|.*_log_volume_ml|.*_(t1n|t1c|t2w|t2f)_original_firstorder_Median)$"
)


def ood_feature_names(names: Sequence[str]) -> list[str]:
    """The phenotype columns of ``names`` that the OOD check uses (order kept)."""
    return [name for name in names if _OOD_FEATURE_PATTERN.match(name)]


@dataclass
class OodDetector:
    """Out-of-distribution score of a feature vector against the training features.

    Features are imputed, mapped to normal scores by their training quantiles (so that no
    heavy-tailed column dominates) and reduced by PCA. Three statistics of a row, each divided
    by its own threshold (the ``1 - (1 - quantile) / 3`` quantile of out-of-fold training rows,
    so that their union flags about ``1 - quantile`` of in-distribution rows): Hotelling T^2
    per PCA component (an unusual combination of the main modes), the PCA reconstruction
    residual (variation the training never showed) and the Mahalanobis distance to the nearest
    training class under their shared within-class covariance (far from every known class;
    Lee et al., NeurIPS 2018). The score is the largest ratio; above 1 is out of distribution.
    Normal scores fold outliers onto the edge of the training range, where T^2 and the
    residual still see them; they also close gaps between classes, hence the class distance.

    Attributes:
        transform: fitted imputer + quantile-normal transform + PCA pipeline.
        components: number of PCA components kept.
        statistic_thresholds: thresholds of T^2, residual and class distance, in that order.
        threshold: 1.0 (scores are ratios to the statistic thresholds).
        quantile: the nominal in-distribution quantile.
        class_means: ``(n_classes, components)`` class means in PCA space.
        within_precision: ``(components, components)`` inverse within-class covariance.
    """

    transform: Pipeline
    components: int
    statistic_thresholds: tuple[float, float, float]
    threshold: float
    quantile: float
    class_means: npt.NDArray[np.float64]
    within_precision: npt.NDArray[np.float64]

    def scores(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scores of rows ``x`` (higher: farther from the training data)."""
        statistics = _statistics(self.transform, self.class_means, self.within_precision, x)
        ratios = statistics / np.asarray(self.statistic_thresholds)[None, :]
        return np.asarray(ratios.max(axis=1), dtype=np.float64)

    def to_state(self) -> dict[str, Any]:
        """The numbers (the pipeline is saved separately with skops)."""
        return {
            "components": self.components,
            "statistic_thresholds": list(self.statistic_thresholds),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "class_means": self.class_means.tolist(),
            "within_precision": self.within_precision.tolist(),
        }


def _fit_transform(x: npt.NDArray[np.float64], variance: float, seed: int) -> Pipeline:
    pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            (
                "normal_scores",
                QuantileTransformer(
                    n_quantiles=min(1000, len(x)), output_distribution="normal", random_state=seed
                ),
            ),
            ("pca", PCA(n_components=variance, svd_solver="full", random_state=seed)),
        ]
    )
    return pipeline.fit(x)


def _class_model(
    pipeline: Pipeline, x: npt.NDArray[np.float64], labels: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Class means and the inverse shared within-class covariance in PCA space."""
    projected = pipeline.transform(x)
    classes = np.unique(labels)
    means = np.stack([projected[labels == c].mean(axis=0) for c in classes])
    centred = np.concatenate([projected[labels == c] - means[i] for i, c in enumerate(classes)])
    covariance = np.atleast_2d(np.cov(centred, rowvar=False))
    # a tiny ridge: PCA components are decorrelated overall but not within classes
    ridge = 1e-6 * np.trace(covariance) / len(covariance)
    precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    return means, precision


def _statistics(
    pipeline: Pipeline,
    class_means: npt.NDArray[np.float64],
    within_precision: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """``(n, 3)``: T^2 per component, squared residual per feature, nearest-class distance."""
    z = pipeline[:-1].transform(x)
    pca: PCA = pipeline[-1]
    projected = pca.transform(z)
    t2 = (projected**2 / pca.explained_variance_[None, :]).sum(axis=1) / pca.n_components_
    residual = ((z - pca.inverse_transform(projected)) ** 2).mean(axis=1)
    distances = [
        np.einsum("ij,jk,ik->i", projected - mean, within_precision, projected - mean)
        for mean in class_means
    ]
    nearest_class = np.min(np.stack(distances), axis=0) / pca.n_components_
    return np.stack([t2, residual, nearest_class], axis=1)


def fit_ood_detector(
    x: npt.NDArray[np.float64],
    labels: Sequence[Any] | None = None,
    *,
    variance: float,
    quantile: float,
    seed: int,
) -> OodDetector:
    """Fit the detector on training rows and set its thresholds on out-of-fold statistics.

    Args:
        x: ``(n, p)`` training features (NaN allowed).
        labels: class of each row (``None``: one class, the nearest-class distance is then a
            Mahalanobis distance to the training mean).
        variance: fraction of variance the PCA keeps.
        quantile: nominal share of in-distribution rows kept, e.g. 0.95.
        seed: fold, quantile-transform and PCA seed.

    Raises:
        ValueError: ``labels`` does not have one entry per row.
    """
    y = np.zeros(len(x), dtype=int) if labels is None else np.asarray(labels)
    if len(y) != len(x):
        raise ValueError(f"labels has {len(y)} entries for {len(x)} feature rows")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    oof = np.empty((len(x), 3))
    for fold in np.array_split(order, min(5, len(x))):  # no empty fold for a tiny cohort
        train = np.setdiff1d(order, fold)
        pipeline = _fit_transform(x[train], variance, seed)
        means, precision = _class_model(pipeline, x[train], y[train])
        oof[fold] = _statistics(pipeline, means, precision, x[fold])
    per_statistic = 1.0 - (1.0 - quantile) / 3.0
    thresholds = np.quantile(oof, per_statistic, axis=0)
    pipeline = _fit_transform(x, variance, seed)
    means, precision = _class_model(pipeline, x, y)
    return OodDetector(
        transform=pipeline,
        components=int(pipeline[-1].n_components_),
        statistic_thresholds=(float(thresholds[0]), float(thresholds[1]), float(thresholds[2])),
        threshold=1.0,
        quantile=quantile,
        class_means=means,
        within_precision=precision,
    )
