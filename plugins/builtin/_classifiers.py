"""Shared parts of the built-in ``classification`` and ``radiogenomics`` analyzers.

Not a plugin (no hook implementation). Result models, options, the task models resolved once
(:class:`TaskModels`), the analyzer base both extend (:class:`ClassifierAnalyzer`) and the one
routine they run: check the tumour, map the atlas (shared with ``nogo``), compute the study's
features once, then assess each task's registered model (out-of-distribution check first).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cerebrascan.classifiers.model_registry import ClassifierNotAvailableError, LoadedClassifier
from cerebrascan.classifiers.segmentation_quality import UNCERTAIN_BAND, segmentation_uncertainty
from cerebrascan.classifiers.serving import (
    RESEARCH_NOTICE,
    Assessment,
    assess,
    calibrated_on,
    calibration_mismatch,
    study_features,
)
from cerebrascan.classifiers.settings import ClassifierSettings
from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.builtin._support import channel, segmentation_of, voxel_volume_ml
from plugins.builtin.nogo import AtlasOptions, RegistrationInfo, map_atlas, registration_info
from plugins.settings import ClassifierResolver

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
    calibrated_on: str | None = Field(
        default=None,
        description="On what the probabilities were calibrated: cohort, n and the "
        "segmentation model the features came from (null when no model was loaded).",
    )


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
    task: str,
    reason: str,
    name: str | None = None,
    version: str | None = None,
    calibration: str | None = None,
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
        calibrated_on=calibration,
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
        calibrated_on=calibrated_on(model.spec),
    )


class TaskModels:
    """The registered models of some tasks, resolved once, when the analyzer is built.

    The host builds its analyzers anew on reload, so a promoted champion is picked up then
    (``POST /admin/models/promote``, ``POST /admin/plugins/reload``). While the registry has
    no usable model for a task, each study asks again (and is "not assessable" until one is
    registered); once resolved, the models stay until the next reload.

    Args:
        tasks: the tasks, in answer order.
        resolve: loads a task's registered model; None: no registry (never assessable).
    """

    def __init__(self, tasks: tuple[str, ...], resolve: ClassifierResolver | None) -> None:
        self.tasks = tasks
        self._resolve = resolve
        self._lock = threading.Lock()
        self._models: dict[str, LoadedClassifier] | None = None
        try:
            self._models = self._resolve_all()
        except ClassifierNotAvailableError as exc:
            logger.info("classifiers %s not resolved at start: %s", list(tasks), exc)
        except Exception:  # an unreachable registry: retried (and reported) per study
            logger.warning("classifiers %s not resolved at start", list(tasks), exc_info=True)

    def _resolve_all(self) -> dict[str, LoadedClassifier]:
        if self._resolve is None:
            raise ClassifierNotAvailableError("no classifier registry configured")
        return {task: self._resolve(task) for task in self.tasks}

    def models(self) -> dict[str, LoadedClassifier]:
        """Task -> its loaded model.

        Raises:
            ClassifierNotAvailableError: a task has no usable registered model (yet).
        """
        with self._lock:
            if self._models is None:
                self._models = self._resolve_all()
            return self._models


@dataclass
class StudyRun:
    """What :func:`run_tasks` found for a study."""

    result: ClassifierResult
    assessments: dict[str, Assessment]


def run_tasks(
    context: AnalysisContext,
    options: ClassifierOptions,
    task_models: TaskModels,
    settings: ClassifierSettings,
    *,
    precondition: str | None = None,
) -> StudyRun:
    """Assess the tasks of ``task_models`` for a study; every failure of a precondition is
    'not assessable'.

    Args:
        context: the analysis context (images and segmentation).
        options: validated options.
        task_models: the tasks to answer, in order, and their resolved models.
        settings: the classifier settings.
        precondition: a reason that makes every task not assessable (e.g. not a glioma).

    Raises:
        ValueError: missing images or segmentation, or mismatched grids.
    """
    tasks = task_models.tasks
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
    try:
        models = task_models.models()
    except ClassifierNotAvailableError as exc:
        logger.warning("classifiers %s unavailable: %s", list(tasks), exc)
        return nothing(f"not assessable: model not installed ({exc})")
    # a calibration holds only for the segmentation model its features were measured on
    served = context.segmentation_model
    mismatched: dict[str, str] = {}
    for task, model in models.items():
        if served is not None:
            reason = calibration_mismatch(model.spec, served.name, served.version, served.onnx_md5)
            if reason is not None:
                mismatched[task] = reason
    if mismatched and len(mismatched) == len(tasks):
        run = nothing(next(iter(mismatched.values())), {m.name: m.version for m in models.values()})
        run.result.predictions = [
            _not_assessable_prediction(
                t, mismatched[t], models[t].name, models[t].version, calibrated_on(models[t].spec)
            )
            for t in tasks
        ]
        return run
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
        if task in mismatched:
            model = models[task]
            predictions.append(
                _not_assessable_prediction(
                    task, mismatched[task], model.name, model.version, calibrated_on(model.spec)
                )
            )
            continue
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


class ClassifierAnalyzer(Analyzer):
    """Base of the analyzers answering registered classifier tasks (not registered itself).

    A subclass sets ``name``, ``version`` and ``tasks`` and may override :meth:`precondition`.

    Args:
        settings: the ``classifiers`` section.
        resolve: loads a task's registered model (the server's registry); None: no registry,
            every task is "not assessable".
    """

    tasks: ClassVar[tuple[str, ...]]
    result_model = ClassifierResult
    options_model = ClassifierOptions
    # probabilities: the segmentation-uncertainty check (skipped when a model gives none)
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.IMAGES, Need.SEGMENTATION, Need.PROBABILITIES}
    )
    timeout_s = 60.0

    def __init__(
        self, settings: ClassifierSettings | None = None, resolve: ClassifierResolver | None = None
    ) -> None:
        self.settings = settings if settings is not None else ClassifierSettings()
        self.task_models = TaskModels(self.tasks, resolve)

    def precondition(self, context: AnalysisContext) -> str | None:
        """Why no task can be assessed for this study before looking at it (None: go on)."""
        return None

    def analyze(self, context: AnalysisContext) -> ClassifierResult:
        """Assess this analyzer's tasks on the study's tumour (research use only).

        Raises:
            TypeError: options not validated by the host.
            ValueError: missing images or segmentation, mismatched grids.
        """
        options = context.options_as(ClassifierOptions)
        return run_tasks(
            context,
            options,
            self.task_models,
            self.settings,
            precondition=self.precondition(context),
        ).result
