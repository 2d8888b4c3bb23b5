"""Longitudinal maths shared by the ``delta`` analyzer and the patient timeline (no I/O).

* :func:`growth_figures`: absolute and relative change, linear growth rate (mL/day) and the
  doubling or halving time of an exponential model between two volumes.
* :func:`classify_response`: the volumetric response category of a study, mRANO-style
  (Ellingson et al. 2017): progression against the nadir (or a new lesion), complete or
  partial response against the baseline, otherwise stable. See ``docs/longitudinal.md``.
* :func:`classify_follow_up`: both categories of a follow-up visit, the one against the
  previous visit alone and the overall one (baseline and nadir of every earlier visit).
* :func:`change_map` and :func:`new_lesions`: voxel-wise new / resolved / stable tumour
  between a registered prior label map and the current one.
* :func:`near_mask`: the voxels within a distance of a mask (distance transform of the mask's
  padded bounding box only, not of the whole grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

if TYPE_CHECKING:
    from cerebrascan.longitudinal.settings import LongitudinalSettings

ResponseCategory = Literal["complete_response", "partial_response", "stable", "progression"]
RESPONSE_CATEGORIES: tuple[str, ...] = (
    "complete_response",
    "partial_response",
    "stable",
    "progression",
)
CHANGE_NONE, CHANGE_NEW, CHANGE_RESOLVED, CHANGE_STABLE = 0, 1, 2, 3
"""Values of the voxel-wise change map."""


@dataclass(frozen=True)
class GrowthFigures:
    """Change of one volume between two dates.

    Attributes:
        absolute_change_ml: current minus prior volume.
        relative_change: ``current / prior - 1``; None when the prior volume is 0.
        growth_rate_ml_per_day: absolute change / days; None when ``days <= 0``.
        doubling_time_days: ``days * ln 2 / ln(current / prior)`` when the volume grew; None
            otherwise (or when either volume is 0).
        halving_time_days: the same for a shrinking volume, as a positive number of days.
    """

    absolute_change_ml: float
    relative_change: float | None
    growth_rate_ml_per_day: float | None
    doubling_time_days: float | None
    halving_time_days: float | None


def growth_figures(prior_ml: float, current_ml: float, days: float) -> GrowthFigures:
    """Growth between two volumes ``days`` apart (exponential model for doubling times).

    Args:
        prior_ml: earlier volume (mL, >= 0).
        current_ml: later volume (mL, >= 0).
        days: time between them (days).

    Returns:
        The figures; undefined ones are None.
    """
    change = current_ml - prior_ml
    relative = current_ml / prior_ml - 1.0 if prior_ml > 0 else None
    rate = change / days if days > 0 else None
    doubling = halving = None
    if days > 0 and prior_ml > 0 and current_ml > 0 and current_ml != prior_ml:
        log_ratio = math.log(current_ml / prior_ml)
        if log_ratio > 0:
            doubling = days * math.log(2.0) / log_ratio
        else:
            halving = days * math.log(2.0) / -log_ratio
    return GrowthFigures(change, relative, rate, doubling, halving)


@dataclass(frozen=True)
class ResponseAssessment:
    """A response category and why.

    Attributes:
        category: complete_response, partial_response, stable or progression.
        reason: which rule decided it, with the figures.
        change_vs_reference: the relative change that decided it (None for new lesions,
            disappearance or an empty reference).
    """

    category: ResponseCategory
    reason: str
    change_vs_reference: float | None


def classify_response(
    current_ml: float,
    *,
    baseline_ml: float,
    nadir_ml: float,
    new_lesion: bool,
    criteria: LongitudinalSettings,
) -> ResponseAssessment:
    """Volumetric response category of a study (rules in ``docs/longitudinal.md``).

    In order: a new lesion is progression; growth of ``progression_change`` or more over the
    nadir is progression (so is reappearance after disappearance); disappearance
    (``<= complete_response_max_ml``) of measurable baseline disease is complete response; a
    change of ``partial_response_change`` or less against the baseline is partial response;
    anything else is stable. Confirmation scans, steroids and clinical status (part of RANO)
    are not considered.

    Args:
        current_ml: response-region volume of the study.
        baseline_ml: the reference of response (the first study, or the previous one when
            comparing consecutive visits).
        nadir_ml: the reference of progression: the smallest earlier volume.
        new_lesion: a new lesion appeared.
        criteria: thresholds.

    Returns:
        The assessment.
    """
    floor = criteria.complete_response_max_ml
    if new_lesion:
        return ResponseAssessment("progression", "a new lesion appeared", None)
    if nadir_ml <= floor:
        if current_ml > floor:
            return ResponseAssessment(
                "progression",
                f"disease reappeared ({current_ml:.3f} mL) after a nadir of {nadir_ml:.3f} mL "
                f"(<= {floor} mL)",
                None,
            )
        return ResponseAssessment(
            "stable", f"no measurable disease (<= {floor} mL) now or at the nadir", None
        )
    versus_nadir = current_ml / nadir_ml - 1.0
    if versus_nadir >= criteria.progression_change:
        return ResponseAssessment(
            "progression",
            f"{versus_nadir:+.1%} vs nadir ({nadir_ml:.3f} mL), threshold "
            f"{criteria.progression_change:+.0%}",
            versus_nadir,
        )
    if baseline_ml <= floor:
        return ResponseAssessment(
            "stable", f"no measurable disease at the reference (<= {floor} mL)", None
        )
    if current_ml <= floor:
        return ResponseAssessment(
            "complete_response",
            f"disease disappeared ({current_ml:.3f} mL <= {floor} mL; baseline "
            f"{baseline_ml:.3f} mL)",
            None,
        )
    versus_baseline = current_ml / baseline_ml - 1.0
    if versus_baseline <= criteria.partial_response_change:
        return ResponseAssessment(
            "partial_response",
            f"{versus_baseline:+.1%} vs baseline ({baseline_ml:.3f} mL), threshold "
            f"{criteria.partial_response_change:+.0%}",
            versus_baseline,
        )
    return ResponseAssessment(
        "stable",
        f"{versus_baseline:+.1%} vs baseline, {versus_nadir:+.1%} vs nadir: within "
        f"{criteria.partial_response_change:+.0%} .. {criteria.progression_change:+.0%}",
        versus_baseline,
    )


@dataclass(frozen=True)
class FollowUpResponse:
    """The two response categories of a follow-up visit.

    Attributes:
        vs_previous: against the previous visit alone (it is both baseline and nadir).
        overall: mRANO-style: the first visit for response, the nadir for progression, new
            lesions since the first visit.
    """

    vs_previous: ResponseAssessment
    overall: ResponseAssessment


def classify_follow_up(
    current_ml: float,
    earlier_ml: Sequence[float],
    *,
    new_lesion_vs_previous: bool,
    new_lesion_since_baseline: bool,
    criteria: LongitudinalSettings,
) -> FollowUpResponse:
    """Response of a visit against the previous visit and overall (:func:`classify_response`).

    Args:
        current_ml: response-region volume of the visit.
        earlier_ml: response-region volumes of the earlier visits, oldest first: the first is
            the baseline, the last the previous visit, the smallest the nadir.
        new_lesion_vs_previous: a new lesion appeared since the previous visit.
        new_lesion_since_baseline: a new lesion appeared since the baseline.
        criteria: thresholds.

    Returns:
        Both assessments.

    Raises:
        ValueError: ``earlier_ml`` is empty (a first visit has no response).
    """
    if not earlier_ml:
        raise ValueError("a follow-up response needs at least one earlier volume, got none")
    previous_ml = earlier_ml[-1]
    vs_previous = classify_response(
        current_ml,
        baseline_ml=previous_ml,
        nadir_ml=previous_ml,
        new_lesion=new_lesion_vs_previous,
        criteria=criteria,
    )
    overall = classify_response(
        current_ml,
        baseline_ml=earlier_ml[0],
        nadir_ml=min(earlier_ml),
        new_lesion=new_lesion_since_baseline,
        criteria=criteria,
    )
    return FollowUpResponse(vs_previous=vs_previous, overall=overall)


def change_map(
    prior_mask: npt.NDArray[np.bool_], current_mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """Voxel-wise change: 1 new (current only), 2 resolved (prior only), 3 stable (both)."""
    out = np.zeros(current_mask.shape, dtype=np.uint8)
    out[current_mask & ~prior_mask] = CHANGE_NEW
    out[prior_mask & ~current_mask] = CHANGE_RESOLVED
    out[prior_mask & current_mask] = CHANGE_STABLE
    return out


def new_lesions(
    prior_tumour: npt.NDArray[np.bool_],
    current_tumour: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    *,
    margin_mm: float,
    min_ml: float,
) -> list[float]:
    """Volumes (mL) of current tumour components that lie away from every prior tumour.

    A 26-connected component of ``current_tumour`` is new when no voxel of it lies within
    ``margin_mm`` of ``prior_tumour`` and it holds at least ``min_ml``.

    Args:
        prior_tumour: the prior's tumour, registered onto the current grid.
        current_tumour: the current tumour.
        spacing_mm: voxel size of the current grid.
        margin_mm: distance that still counts as the prior tumour.
        min_ml: smallest volume of a new lesion.

    Returns:
        The new lesions' volumes, largest first.
    """
    if not current_tumour.any():
        return []
    components, count = ndimage.label(current_tumour, structure=np.ones((3, 3, 3), bool))
    near = near_mask(prior_tumour, spacing_mm, margin_mm)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    touching = np.unique(components[near & (components > 0)])
    volumes = [
        float(sizes[k] * voxel_ml)
        for k in range(1, count + 1)
        if k not in set(touching.tolist()) and sizes[k] * voxel_ml >= min_ml
    ]
    return sorted(volumes, reverse=True)


def near_mask(
    mask: npt.NDArray[np.bool_], spacing_mm: Sequence[float], distance_mm: float
) -> npt.NDArray[np.bool_]:
    """Voxels whose centre lies within ``distance_mm`` of a voxel of ``mask`` (the mask too).

    The same as ``distance_transform_edt(~mask, sampling=spacing_mm) <= distance_mm``, but the
    distance transform runs on the mask's bounding box padded by ``distance_mm`` (plus a
    voxel) only: a tumour fills a few percent of a head's grid, and every voxel outside that
    box is farther than ``distance_mm`` from the mask along one axis alone.

    Args:
        mask: 3D boolean mask.
        spacing_mm: voxel size per axis (mm).
        distance_mm: the distance (>= 0).

    Returns:
        A boolean array of the mask's shape; all False for an empty mask.

    Raises:
        ValueError: a negative distance or a spacing that does not match the mask's dimensions.
    """
    if distance_mm < 0 or not math.isfinite(distance_mm):
        raise ValueError(f"distance_mm must be a finite number >= 0, got {distance_mm}")
    if len(spacing_mm) != mask.ndim or any(s <= 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm {tuple(spacing_mm)} must be {mask.ndim} positive numbers")
    near = np.zeros(mask.shape, dtype=bool)
    found = np.nonzero(mask)
    if found[0].size == 0:
        return near
    box = tuple(
        slice(
            max(int(axis.min()) - pad, 0),
            min(int(axis.max()) + pad + 1, size),
        )
        for axis, size, pad in (
            (axis, size, math.ceil(distance_mm / spacing) + 1)
            for axis, size, spacing in zip(found, mask.shape, spacing_mm, strict=True)
        )
    )
    distance = ndimage.distance_transform_edt(~mask[box], sampling=tuple(spacing_mm))
    near[box] = distance <= distance_mm
    return near
