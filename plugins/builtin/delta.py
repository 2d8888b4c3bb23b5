"""Built-in ``delta`` analyzer: change since the patient's earlier studies.

Needs the segmentation, the images (to register) and the patient's history
(``Need.PRIOR_STUDIES``: a :class:`~plugins.analyzer.PatientHistory`). For the most recent
earlier study it registers the prior's stored image rigidly onto the current one, resamples the
prior's labels onto the current grid and reports, per label and region (NETC, SNFH, ET, TC,
WT): volume change, growth rate, doubling or halving time and the new / resolved / stable
volumes; it writes the voxel-wise change map of the whole tumour as the artefact
``change_map`` and gives the volumetric response category against the previous study and the
mRANO-style overall one (baseline for response, nadir for progression). Thresholds come from
``Settings.longitudinal``; see ``docs/longitudinal.md``.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.imaging.regions import STRUCTURES, structure_mask
from cerebrascan.longitudinal.registration import metric_mask, register_visits, resample_labels
from cerebrascan.longitudinal.response import (
    ResponseAssessment,
    change_map,
    classify_follow_up,
    growth_figures,
    new_lesions,
)
from cerebrascan.longitudinal.settings import LongitudinalSettings
from plugins.analyzer import AnalysisContext, Analyzer, Need, PriorStudy
from plugins.builtin._support import channel, segmentation_volumes
from plugins.hookspecs import hookimpl

logger = logging.getLogger(__name__)

ResponseCategoryName = Literal["complete_response", "partial_response", "stable", "progression"]
CHANGE_MAP_DESCRIPTION = "WT change vs registered prior: 1 new, 2 resolved, 3 stable"


class RegionDelta(BaseModel):
    """Change of one label or region between the prior and the current study."""

    prior_ml: float = Field(description="Volume in the prior study (its stored result), mL.")
    prior_registered_ml: float | None = Field(
        description="Volume of the prior's labels resampled onto the current grid, mL (None "
        "without registration)."
    )
    current_ml: float = Field(description="Volume in the current study, mL.")
    absolute_change_ml: float = Field(description="current_ml - prior_ml.")
    relative_change: float | None = Field(
        description="current_ml / prior_ml - 1; None when the prior volume is 0."
    )
    growth_rate_ml_per_day: float | None = Field(
        description="absolute_change_ml / days between the studies; None for the same day."
    )
    doubling_time_days: float | None = Field(
        description="Exponential doubling time (growth only); None otherwise."
    )
    halving_time_days: float | None = Field(
        description="Exponential halving time (shrinkage only); None otherwise."
    )
    new_ml: float | None = Field(
        description="Current volume outside the registered prior region, mL (None without "
        "registration)."
    )
    resolved_ml: float | None = Field(
        description="Registered prior volume outside the current region, mL."
    )
    stable_ml: float | None = Field(description="Volume in both, mL.")


class RegistrationSummary(BaseModel):
    """The rigid registration of the prior onto the current study."""

    prior_study_id: str = Field(description="The registered prior study.")
    rotation_deg: float = Field(description="Rotation angle between the two head positions.")
    translation_mm: float = Field(description="Shift of the image centre between the visits.")
    metric: float = Field(description="Final Mattes mutual information (lower is better).")
    iterations: int = Field(description="Optimiser iterations at the finest level.")
    current_to_prior_ras: list[list[float]] = Field(
        description="4x4 matrix: current RAS point (mm) -> prior RAS point."
    )


class ResponseResult(BaseModel):
    """A volumetric response category."""

    category: ResponseCategoryName = Field(description="The category.")
    reason: str = Field(description="The rule that decided it, with the figures.")
    change_vs_reference: float | None = Field(
        description="The relative change that decided it, if one did."
    )
    reference_study_id: str = Field(description="The study compared with.")


class DeltaResult(BaseModel):
    """Change since the patient's earlier studies (research use only)."""

    computed: bool = Field(description="Whether a delta was computed (False: see reason).")
    reason: str | None = Field(description="Why no delta was computed; None when it was.")
    study_date: date | None = Field(description="Acquisition date of the current study.")
    priors_considered: int = Field(description="Earlier studies of the patient considered.")
    prior_study_id: str | None = Field(description="The most recent earlier study.")
    prior_study_date: date | None = Field(description="Its acquisition date.")
    days_since_prior: int | None = Field(description="Days between it and this study.")
    prior_model_version: str | None = Field(
        description="Model name:version that segmented the prior."
    )
    model_version_differs: bool = Field(
        description="True when the prior was segmented by another model or version: the "
        "change then mixes disease and model differences."
    )
    warnings: list[str] = Field(description="Caveats of this result.")
    regions: dict[str, RegionDelta] = Field(
        description="Change per label and region (NETC, SNFH, ET, TC, WT) vs the prior."
    )
    new_lesions_ml: list[float] = Field(
        description="Volumes of tumour components away from the registered prior tumour."
    )
    registration: RegistrationSummary | None = Field(
        description="The registration of the prior (None when it had no stored image)."
    )
    response_region: str = Field(description="Region whose volume decides the response.")
    baseline_study_id: str | None = Field(description="The patient's first earlier study.")
    baseline_ml: float | None = Field(description="Response-region volume at baseline, mL.")
    nadir_study_id: str | None = Field(description="The earlier study with the least volume.")
    nadir_ml: float | None = Field(description="Response-region volume at the nadir, mL.")
    response_vs_previous: ResponseResult | None = Field(
        description="Category against the most recent earlier study alone."
    )
    response_overall: ResponseResult | None = Field(
        description="mRANO-style category: baseline for response, nadir for progression, "
        "new lesions since baseline."
    )


class DeltaAnalyzer(Analyzer):
    """Longitudinal change against the patient's earlier studies (registered, rigid).

    Needs a patient id and a study date in the request; otherwise (or without an earlier
    study) the result says why there is no delta.
    """

    name = "delta"
    version = "1.0.0"
    result_model = DeltaResult
    needs = frozenset({Need.SEGMENTATION, Need.IMAGES, Need.PRIOR_STUDIES})
    timeout_s = 240.0

    def analyze(self, context: AnalysisContext) -> DeltaResult:
        """Register the latest prior, compare volumes and voxels, classify the response.

        Raises:
            ValueError: the images lack the registration modality or the segmentation is
                missing.
        """
        history = context.prior_studies
        if history is None:
            return _no_delta(None, 0, "no patient history was provided to the analyzer")
        if history.reason is not None or not history.priors:
            reason = history.reason or "the patient has no earlier study"
            return _no_delta(history.study_date, 0, reason)
        labels = context.segmentation
        if labels is None:
            raise ValueError("the analysis context has no segmentation")
        criteria = history.criteria
        current_volumes = segmentation_volumes(context)
        prior = history.priors[-1]
        baseline = history.priors[0]
        region = criteria.response_region
        nadir = min(history.priors, key=lambda p: p.volumes_ml.get(region, 0.0))
        warnings: list[str] = []
        if not prior.same_model:
            warnings.append(
                f"the prior study was segmented by {prior.model_name}:{prior.model_version}, "
                "not the current model; volume changes mix disease and model differences"
            )
        image = channel(context, criteria.registration_modality)
        spacing = spacing_from_affine(context.affine)
        current_mask = metric_mask(image, labels > 0, spacing)
        days = _days(history.study_date, prior.study_date)
        registered = _registered_labels(context, prior, image, current_mask, criteria, warnings)
        regions = _region_deltas(
            prior,
            current_volumes,
            labels,
            registered[0] if registered is not None else None,
            float(np.prod(context.spacing_mm)) / 1000.0,
            days,
        )
        lesions_vs_previous: list[float] = []
        if registered is not None:
            prior_labels = registered[0]
            lesions_vs_previous = _new_lesions(prior_labels, labels, spacing, criteria)
            context.artefacts.write_nifti(
                "change_map",
                change_map(prior_labels > 0, labels > 0),
                description=CHANGE_MAP_DESCRIPTION,
            )
        lesions_vs_baseline = lesions_vs_previous
        if baseline.study_id != prior.study_id:
            registered_baseline = _registered_labels(
                context, baseline, image, current_mask, criteria, warnings
            )
            if registered_baseline is not None:
                lesions_vs_baseline = _new_lesions(
                    registered_baseline[0], labels, spacing, criteria
                )
        responses = classify_follow_up(
            current_volumes[region],
            [p.volumes_ml.get(region, 0.0) for p in history.priors],
            new_lesion_vs_previous=bool(lesions_vs_previous),
            new_lesion_since_baseline=bool(lesions_vs_baseline),
            criteria=criteria,
        )
        return DeltaResult(
            computed=True,
            reason=None,
            study_date=history.study_date,
            priors_considered=len(history.priors),
            prior_study_id=prior.study_id,
            prior_study_date=prior.study_date,
            days_since_prior=days,
            prior_model_version=f"{prior.model_name}:{prior.model_version}",
            model_version_differs=not prior.same_model,
            warnings=warnings,
            regions=regions,
            new_lesions_ml=[round(v, 4) for v in lesions_vs_previous],
            registration=registered[1] if registered is not None else None,
            response_region=region,
            baseline_study_id=baseline.study_id,
            baseline_ml=baseline.volumes_ml.get(region, 0.0),
            nadir_study_id=nadir.study_id,
            nadir_ml=nadir.volumes_ml.get(region, 0.0),
            response_vs_previous=_response(responses.vs_previous, prior.study_id),
            response_overall=_response(responses.overall, baseline.study_id),
        )


def _response(assessment: ResponseAssessment, reference_study_id: str) -> ResponseResult:
    return ResponseResult(
        category=assessment.category,
        reason=assessment.reason,
        change_vs_reference=assessment.change_vs_reference,
        reference_study_id=reference_study_id,
    )


def _new_lesions(
    registered_prior: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.uint8],
    spacing_mm: tuple[float, float, float],
    criteria: LongitudinalSettings,
) -> list[float]:
    """New lesions of the current tumour against a registered earlier one (thresholds of
    ``criteria``)."""
    return new_lesions(
        registered_prior > 0,
        labels > 0,
        spacing_mm,
        margin_mm=criteria.new_lesion_margin_mm,
        min_ml=criteria.new_lesion_min_ml,
    )


def _days(current: date | None, prior: date) -> int | None:
    return (current - prior).days if current is not None else None


def _no_delta(study_date: date | None, priors: int, reason: str) -> DeltaResult:
    return DeltaResult(
        computed=False,
        reason=reason,
        study_date=study_date,
        priors_considered=priors,
        prior_study_id=None,
        prior_study_date=None,
        days_since_prior=None,
        prior_model_version=None,
        model_version_differs=False,
        warnings=[],
        regions={},
        new_lesions_ml=[],
        registration=None,
        response_region="",
        baseline_study_id=None,
        baseline_ml=None,
        nadir_study_id=None,
        nadir_ml=None,
        response_vs_previous=None,
        response_overall=None,
    )


def _registered_labels(
    context: AnalysisContext,
    prior: PriorStudy,
    image: npt.NDArray[np.float32],
    current_mask: npt.NDArray[np.bool_],
    criteria: LongitudinalSettings,
    warnings: list[str],
) -> tuple[npt.NDArray[np.uint8], RegistrationSummary] | None:
    """The prior's labels registered onto the current grid, or None (with a warning)."""
    reference = prior.load_reference_image()
    if reference is None:
        warnings.append(
            f"study {prior.study_id} has no stored registration image: no voxel-wise change "
            "and no new-lesion check against it"
        )
        return None
    prior_image, prior_affine = reference
    prior_labels, labels_affine = prior.load_labels()
    prior_spacing = spacing_from_affine(prior_affine)
    registration = register_visits(
        image,
        context.affine,
        prior_image,
        prior_affine,
        current_mask=current_mask,
        prior_mask=metric_mask(prior_image, prior_labels > 0, prior_spacing),
        spacing_mm=criteria.registration_spacing_mm,
    )
    resampled = resample_labels(
        prior_labels,
        labels_affine,
        registration.current_to_prior_ras,
        context.affine,
        tuple(int(n) for n in image.shape),  # type: ignore[arg-type]
    )
    summary = RegistrationSummary(
        prior_study_id=prior.study_id,
        rotation_deg=round(registration.rotation_deg, 4),
        translation_mm=round(registration.translation_mm, 4),
        metric=registration.metric,
        iterations=registration.iterations,
        current_to_prior_ras=registration.current_to_prior_ras.tolist(),
    )
    return resampled, summary


def _region_deltas(
    prior: PriorStudy,
    current_volumes: dict[str, float],
    labels: npt.NDArray[np.uint8],
    registered: npt.NDArray[np.uint8] | None,
    voxel_ml: float,
    days: int | None,
) -> dict[str, RegionDelta]:
    """Volume change and voxel-wise new / resolved / stable volumes per label and region."""
    out: dict[str, RegionDelta] = {}
    for name in STRUCTURES:
        prior_ml = float(prior.volumes_ml.get(name, 0.0))
        current_ml = float(current_volumes[name])
        figures = growth_figures(prior_ml, current_ml, float(days) if days is not None else 0.0)
        new_ml = resolved_ml = stable_ml = registered_ml = None
        if registered is not None:
            current_mask = structure_mask(labels, name)
            prior_mask = structure_mask(registered, name)
            registered_ml = float(np.count_nonzero(prior_mask)) * voxel_ml
            new_ml = float(np.count_nonzero(current_mask & ~prior_mask)) * voxel_ml
            resolved_ml = float(np.count_nonzero(prior_mask & ~current_mask)) * voxel_ml
            stable_ml = float(np.count_nonzero(prior_mask & current_mask)) * voxel_ml
        out[name] = RegionDelta(
            prior_ml=prior_ml,
            prior_registered_ml=registered_ml,
            current_ml=current_ml,
            absolute_change_ml=figures.absolute_change_ml,
            relative_change=figures.relative_change,
            growth_rate_ml_per_day=figures.growth_rate_ml_per_day,
            doubling_time_days=figures.doubling_time_days,
            halving_time_days=figures.halving_time_days,
            new_ml=new_ml,
            resolved_ml=resolved_ml,
            stable_ml=stable_ml,
        )
    return out


@hookimpl
def register_analyzers() -> list[Analyzer]:
    """The ``delta`` analyzer."""
    return [DeltaAnalyzer()]
