"""Shared parts of the built-in ``classification`` and ``radiogenomics`` analyzers.

Not a plugin (no hook implementation). Result models, options and the one routine both
analyzers run: check the tumour, map the atlas (shared with ``nogo``), compute the study's
features once, then assess each task's registered model (out-of-distribution check first).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cerebrascan.classifiers.segmentation_quality import UNCERTAIN_BAND, segmentation_uncertainty
from cerebrascan.classifiers.serving import RESEARCH_NOTICE, Assessment, assess, study_features
from cerebrascan.classifiers.store import (
    ClassifierNotAvailableError,
    LoadedClassifier,
    resolve_classifier,
)
from cerebrascan.settings import ClassifierSettings, Settings
from plugins.analyzer import AnalysisContext
from plugins.builtin._support import channel, segmentation_of, voxel_volume_ml
from plugins.builtin.nogo import AtlasOptions, RegistrationInfo, map_atlas, registration_info

logger = logging.getLogger(__name__)


class ClassifierOptions(AtlasOptions):
    """Per-request options of the classification and radiogenomics analyzers."""

    model_config = ConfigDict(extra="forbid")

    patient_age_years: float | None = Field(
        default=None,
        ge=0.0,
        le=120.0,
        description="The patient's age in years, a feature of the models when given.",
    )


class FeatureContribution(BaseModel):
    """One feature that pushed the decision."""

    name: str = Field(description="Feature name (region_modality_feature, location_*, age).")
    value: float | None = Field(description="The study's value (null: undefined, imputed).")
    contribution: float = Field(
        description="Coefficient x scaled value towards the answered label (logit units, "
        "averaged over the calibration folds)."
    )


class TaskPrediction(BaseModel):
    """The answer of one task's model."""

    task: str = Field(description="tumour_type, grade, idh or mgmt.")
    assessable: bool = Field(description="False: no label is given (see reason).")
    reason: str | None = Field(description="Why the task is not assessable; null otherwise.")
    label: str | None = Field(description="Most probable class; null when not assessable.")
    probabilities: dict[str, float] = Field(
        description="Calibrated probability of each class; empty when not assessable."
    )
    confidence: float | None = Field(
        description="Calibrated probability of the label; null when not assessable."
    )
    top_features: list[FeatureContribution] = Field(
        description="Features that pushed the decision towards the label most."
    )
    ood_score: float | None = Field(
        description="Out-of-distribution score of the feature vector (null: not computed)."
    )
    ood_threshold: float | None = Field(
        description="Scores above this are outside the training distribution."
    )
    model_name: str | None = Field(description="Registered model name.")
    model_version: str | None = Field(description="Registry version used; null if none.")


class ClassifierResult(BaseModel):
    """Common result of the classifier analyzers (research use only)."""

    research_use_only: str = Field(description="Notice: research use only, not a diagnosis.")
    assessable: bool = Field(description="False when no task could be answered (reason says why).")
    reason: str | None = Field(description="Why nothing is assessable; null otherwise.")
    predictions: list[TaskPrediction] = Field(description="One entry per task.")
    model_versions: dict[str, str] = Field(
        description="Registered model name -> version of every model used."
    )
    tumour_volume_ml: float = Field(description="Whole-tumour volume of the segmentation (mL).")
    segmentation_uncertainty: float | None = Field(
        default=None,
        description="Voxels of uncertain (0.2-0.8) tumour probability per segmented tumour "
        "voxel; above classifiers.max_segmentation_uncertainty nothing is assessable (null: "
        "no probabilities, or not reached).",
    )
    age_given: bool = Field(description="Whether patient_age_years was given.")
    registration: RegistrationInfo | None = Field(
        description="How the atlas reached the study (null when not needed)."
    )
    features_ms: float | None = Field(
        description="Time to compute the study's features (ms; null when cached or skipped)."
    )


def _rounded(value: float | None) -> float | None:
    """JSON-safe: None stays None, inf becomes None (an empty segmentation has no ratio)."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 4)


def _not_assessable_prediction(
    task: str, reason: str, name: str | None = None, version: str | None = None
) -> TaskPrediction:
    return TaskPrediction(
        task=task,
        assessable=False,
        reason=reason,
        label=None,
        probabilities={},
        confidence=None,
        top_features=[],
        ood_score=None,
        ood_threshold=None,
        model_name=name,
        model_version=version,
    )


def prediction_of(task: str, model: LoadedClassifier, answer: Assessment) -> TaskPrediction:
    """A :class:`TaskPrediction` from a serving assessment."""
    return TaskPrediction(
        task=task,
        assessable=answer.assessable,
        reason=answer.reason,
        label=answer.label,
        probabilities=answer.probabilities,
        confidence=answer.confidence,
        top_features=[
            FeatureContribution(name=n, value=v, contribution=c) for n, v, c in answer.top_features
        ],
        ood_score=answer.ood_score,
        ood_threshold=answer.ood_threshold,
        model_name=model.name,
        model_version=model.version,
    )


@dataclass
class StudyRun:
    """What :func:`run_tasks` found for a study."""

    result: ClassifierResult
    assessments: dict[str, Assessment]


def run_tasks(
    context: AnalysisContext,
    options: ClassifierOptions,
    tasks: tuple[str, ...],
    settings: ClassifierSettings,
    full_settings: Settings,
    *,
    precondition: str | None = None,
) -> StudyRun:
    """Assess ``tasks`` for a study; every failure of a precondition is 'not assessable'.

    Args:
        context: the analysis context (images and segmentation).
        options: validated options.
        tasks: tasks to answer, in order.
        settings: the classifier settings.
        full_settings: the server settings (registry location).
        precondition: a reason that makes every task not assessable (e.g. not a glioma).

    Raises:
        ValueError: missing images or segmentation, or mismatched grids.
    """
    segmentation = segmentation_of(context, channel(context, "t1n").shape)
    volume_ml = float(np.count_nonzero(segmentation)) * voxel_volume_ml(context.affine)
    uncertainty: float | None = None

    def nothing(reason: str, models: dict[str, str] | None = None) -> StudyRun:
        return StudyRun(
            ClassifierResult(
                research_use_only=RESEARCH_NOTICE,
                assessable=False,
                reason=reason,
                predictions=[_not_assessable_prediction(t, reason) for t in tasks],
                model_versions=models or {},
                tumour_volume_ml=round(volume_ml, 4),
                segmentation_uncertainty=_rounded(uncertainty),
                age_given=options.patient_age_years is not None,
                registration=None,
                features_ms=None,
            ),
            {},
        )

    if precondition is not None:
        return nothing(precondition)
    if volume_ml < settings.min_tumour_ml:
        return nothing(
            f"not assessable: tumour too small ({volume_ml:.2f} mL < {settings.min_tumour_ml} mL)"
        )
    uncertainty = segmentation_uncertainty(context.probabilities, segmentation)
    limit = settings.max_segmentation_uncertainty
    if uncertainty is not None and limit is not None and uncertainty > limit:
        low, high = UNCERTAIN_BAND
        return nothing(
            "not assessable: the segmentation looks failed, so its features would not describe "
            f"the tumour ({uncertainty:.2f} voxels at {low}-{high} tumour probability per "
            f"segmented voxel > {limit})"
        )
    models: dict[str, LoadedClassifier] = {}
    for task in tasks:
        try:
            models[task] = resolve_classifier(full_settings, task)
        except ClassifierNotAvailableError as exc:
            logger.warning("classifier %s unavailable: %s", task, exc)
            return nothing(f"not assessable: model not installed ({exc})")
    started = time.perf_counter()
    mapping = map_atlas(context, options)
    images = context.images
    assert images is not None  # channel() above checked it
    try:
        features = study_features(
            context.study_id,
            images,
            tuple(context.modalities),
            segmentation,
            np.asarray(context.affine, dtype=np.float64),
            mapping,
            options.patient_age_years,
        )
    except ValueError as exc:
        return nothing(
            f"not assessable: features could not be computed ({exc})",
            {m.name: m.version for m in models.values()},
        )
    features_ms = (time.perf_counter() - started) * 1000.0
    predictions, assessments = [], {}
    for task in tasks:
        answer = assess(
            models[task],
            features,
            threshold_scale=settings.ood_threshold_scale,
            top_features=settings.top_features,
        )
        assessments[task] = answer
        predictions.append(prediction_of(task, models[task], answer))
    assessable = any(p.assessable for p in predictions)
    return StudyRun(
        ClassifierResult(
            research_use_only=RESEARCH_NOTICE,
            assessable=assessable,
            reason=None if assessable else predictions[0].reason,
            predictions=predictions,
            model_versions={m.name: m.version for m in models.values()},
            tumour_volume_ml=round(volume_ml, 4),
            segmentation_uncertainty=_rounded(uncertainty),
            age_given=options.patient_age_years is not None,
            registration=registration_info(mapping, options.registration),
            features_ms=round(features_ms, 1),
        ),
        assessments,
    )
