"""Serve the classifiers: one feature vector per study, assessed by each task's model (maths).

:func:`study_features` computes a study's features once (radiomics on the predicted
segmentation, location through the SRI24 atlas mapping shared with ``nogo`` / ``hotspot``, age)
and keeps them in a small LRU cache keyed by study, segmentation digest and age, so the
``classification`` and ``radiogenomics`` analyzers of one study share them.
:func:`assess` turns a feature vector into a :class:`Assessment`: out-of-distribution check
first (outside the training distribution there is no label), then calibrated probabilities
and the features that pushed the decision most.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cerebrascan.atlas.mapping import AtlasMapping
from cerebrascan.classifiers.features import MODALITIES, case_features
from cerebrascan.classifiers.model_registry import LoadedClassifier
from cerebrascan.classifiers.models import contributions, feature_matrix

logger = logging.getLogger(__name__)

RESEARCH_NOTICE = (
    "Research use only: produced by models trained on synthetic phantoms, not validated on "
    "patients; not a diagnosis."
)
_CACHE_SIZE = 4
_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[Any, ...], dict[str, float]] = OrderedDict()


@dataclass(frozen=True)
class Assessment:
    """One task's answer.

    Attributes:
        assessable: False when the case is out of distribution (no label then).
        reason: why not assessable, else None.
        label: the most probable class (None when not assessable).
        probabilities: calibrated class probabilities (empty when not assessable).
        confidence: the calibrated probability of ``label``.
        ood_score: the out-of-distribution score.
        ood_threshold: the score above which the case is out of distribution.
        top_features: ``(name, value, contribution)`` of the features that pushed the
            decision towards ``label`` most (largest contributions first).
    """

    assessable: bool
    reason: str | None
    label: str | None
    probabilities: dict[str, float]
    confidence: float | None
    ood_score: float
    ood_threshold: float
    top_features: list[tuple[str, float | None, float]] = field(default_factory=list)


def _digest(segmentation: npt.NDArray[Any]) -> str:
    return hashlib.blake2b(np.ascontiguousarray(segmentation).data, digest_size=16).hexdigest()


def study_features(
    study_id: str,
    images: npt.NDArray[np.float32],
    modalities: tuple[str, ...],
    segmentation: npt.NDArray[np.uint8],
    affine: npt.NDArray[np.float64],
    mapping: AtlasMapping,
    age_years: float | None,
) -> dict[str, float]:
    """Features of a study (cached per study, segmentation and age).

    Args:
        study_id: the study.
        images: ``(n, x, y, z)`` in ``modalities`` order.
        modalities: names of the image channels (must include t1n, t1c, t2w, t2f).
        segmentation: BraTS labels on the image grid, with tumour.
        affine: 4x4 voxel-to-RAS affine.
        mapping: the SRI24 structures on the grid.
        age_years: the patient's age or None.

    Raises:
        ValueError: a modality is missing, or no tumour / brain.
    """
    missing = [m for m in MODALITIES if m not in modalities]
    if missing:
        raise ValueError(f"study lacks modalities {missing}; the classifiers need {MODALITIES}")
    key = (study_id, _digest(segmentation), None if age_years is None else float(age_years))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    by_name = {m: images[modalities.index(m)] for m in MODALITIES}
    features = case_features(by_name, segmentation, affine, mapping.atlas, age_years)
    with _cache_lock:
        _cache[key] = features
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return features


def clear_cache() -> None:
    """Forget every cached feature vector (tests)."""
    with _cache_lock:
        _cache.clear()


def assess(
    classifier: LoadedClassifier,
    features: Mapping[str, float],
    *,
    threshold_scale: float,
    top_features: int,
) -> Assessment:
    """Out-of-distribution check, then calibrated probabilities and contributions.

    Args:
        classifier: the loaded model of one task.
        features: the study's features.
        threshold_scale: multiplier of the model's OOD threshold.
        top_features: how many contributing features to list.
    """
    ood_row = feature_matrix([features], classifier.ood_feature_names)
    score = float(classifier.ood.scores(ood_row)[0])
    threshold = float(classifier.ood.threshold * threshold_scale)
    if not math.isfinite(score) or score > threshold:
        return Assessment(
            assessable=False,
            reason=(
                f"not assessable: the feature vector lies outside the training distribution "
                f"(OOD score {score:.2f} > threshold {threshold:.2f})"
            ),
            label=None,
            probabilities={},
            confidence=None,
            ood_score=round(score, 4),
            ood_threshold=round(threshold, 4),
        )
    names = classifier.feature_names
    row = feature_matrix([features], names)
    probabilities = classifier.model.predict_proba(row)[0]
    classes = classifier.classes
    best = int(np.argmax(probabilities))
    parts = contributions(classifier.model, row, len(names))
    towards = parts[0] if parts.shape[0] == 1 else parts[best]
    if parts.shape[0] == 1 and best == 0:
        towards = -towards  # binary: positive values push towards the second class
    order = np.argsort(-towards)[:top_features]
    listed = [
        (
            names[i],
            None if math.isnan(row[0, i]) else round(float(row[0, i]), 4),
            round(float(towards[i]), 4),
        )
        for i in order
    ]
    return Assessment(
        assessable=True,
        reason=None,
        label=str(classes[best]),
        probabilities={
            str(c): round(float(p), 4) for c, p in zip(classes, probabilities, strict=True)
        },
        confidence=round(float(probabilities[best]), 4),
        ood_score=round(score, 4),
        ood_threshold=round(threshold, 4),
        top_features=listed,
    )


def calibrated_on(spec: Mapping[str, Any]) -> str:
    """On what a classifier's probabilities were calibrated: cohort, n, segmentation model
    (from its ``spec.json``), for every probability it answers."""
    counts = spec.get("train_class_counts") or {}
    n = sum(int(v) for v in counts.values()) if counts else None
    record = spec.get("segmentation_model") or {}
    model = (
        f"segmentation model {record.get('folder', '?')} "
        f"(ONNX MD5 {str(record.get('onnx_md5', '?'))[:12]})"
        if record
        else "segmentation model not recorded"
    )
    cohort = str(spec.get("training_data") or "cohort not recorded").split(";")[0]
    size = f"n={n}" if n is not None else "n not recorded"
    return f"calibrated on {cohort} ({size}); features from {model}"


def calibration_mismatch(
    spec: Mapping[str, Any], served_name: str, served_version: str, served_md5: str | None
) -> str | None:
    """Why a classifier's calibration does not hold for the served segmentation model, or None.

    The classifier's ``spec.json`` records the segmentation model its features (and so its
    calibration) came from (``segmentation_model.onnx_md5``). A served model with another ONNX
    file, or one whose file cannot be read, is not the one measured on.
    """
    record = spec.get("segmentation_model") or {}
    expected = record.get("onnx_md5")
    if not expected:
        return None  # the classifier records no model: nothing to compare (older specs)
    if served_md5 == expected:
        return None
    served = f"{served_name} version {served_version}"
    found = f"ONNX MD5 {served_md5[:12]}" if served_md5 else "its ONNX file is not readable here"
    return (
        f"not assessable: this classifier was calibrated on the segmentations of "
        f"{record.get('folder', 'another model')} (ONNX MD5 {str(expected)[:12]}); the served "
        f"segmentation model is {served} ({found}), so its probabilities would not hold"
    )
