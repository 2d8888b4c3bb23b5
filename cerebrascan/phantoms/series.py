"""Longitudinal phantom series: several visits of one synthetic patient (pure maths).

A series starts from one generated baseline tumour (``random_warp=False``, so case space is
atlas space) and renders every visit with :func:`generate_case_with_anatomy` and a given
tumour label map:

1. **Tumour size.** Visit ``v`` holds the baseline tumour scaled about its centre by
   ``volume_factors[v] ** (1/3)`` (nearest neighbour, clipped to the brain): every label grows
   or shrinks by the same volume factor. A factor of 0 removes the tumour (complete response).
   :func:`exponential_factors` gives factors of a constant growth (or shrinkage) rate.
2. **New lesion.** From visit ``satellite_from_visit`` on, a small satellite lesion (an ET ball
   in a SNFH shell) appears in white matter far from the main tumour.
3. **Head position.** Each visit's head is moved rigidly (random axis, angle and translation,
   about the brain centre), as heads lie differently in the scanner at each visit. The pose of
   visit ``v`` maps baseline-anatomy RAS points to visit RAS points; ``truth["pose"]``.
4. **Grid.** ``downsample=2`` averages 2x2x2 blocks of the images and takes the majority label
   of each block, which keeps tests on a 2 mm grid cheap.

The truth of every visit holds its date, the voxel-exact volumes per region, the pose and the
expected response categories (see :func:`expected_responses`): against the previous visit, and
the RANO-style overall category (baseline is the reference of response, the nadir the
reference of progression, a new lesion is progression).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
from scipy import ndimage

from cerebrascan.phantoms.anatomy import load_anatomy
from cerebrascan.phantoms.generator import (
    PhantomCase,
    PhantomParams,
    case_seed,
    compute_truth,
    generate_case_with_anatomy,
)

SERIES_VERSION = "1.0.0"
REGIONS = ("NETC", "SNFH", "ET", "TC", "WT")
#: Default thresholds of the expected categories (the same defaults as
#: ``cerebrascan.settings.LongitudinalSettings``; see docs/longitudinal.md).
PARTIAL_RESPONSE_CHANGE = -0.65
PROGRESSION_CHANGE = 0.40
#: A designed ratio this close (relative) to a threshold makes the expected category ambiguous.
AMBIGUITY_MARGIN = 0.08
SATELLITE_CORE_RADIUS_MM = 4.0
SATELLITE_EDEMA_RADIUS_MM = 6.5
SATELLITE_MIN_DISTANCE_MM = 25.0


@dataclass(frozen=True)
class SeriesPlan:
    """Design of one phantom series.

    Attributes:
        seed: non-negative seed of the baseline tumour, the poses and the satellite place.
        visit_days: days since the first visit, strictly increasing, starting at 0.
        volume_factors: tumour volume of each visit relative to the baseline (first 1.0);
            0 removes the tumour.
        satellite_from_visit: first visit index with a new satellite lesion; None for none.
        max_rotation_deg: largest head rotation of a visit (about a random axis).
        max_translation_mm: largest head translation along each axis.
        first_date: acquisition date of the first visit.
        downsample: 1 (1 mm atlas grid) or 2 (2 mm grid, for quick tests).
        wt_volume_ml: range of the baseline whole-tumour volume drawn by the generator.
    """

    seed: int
    visit_days: tuple[int, ...]
    volume_factors: tuple[float, ...]
    satellite_from_visit: int | None = None
    max_rotation_deg: float = 8.0
    max_translation_mm: float = 8.0
    first_date: date = date(2025, 1, 6)
    downsample: int = 1
    wt_volume_ml: tuple[float, float] = (30.0, 60.0)

    def __post_init__(self) -> None:
        """Validate the design; errors name the bad field and value."""
        days, factors = self.visit_days, self.volume_factors
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if len(days) < 1 or len(days) != len(factors):
            raise ValueError(
                f"visit_days {days} and volume_factors {factors} must be non-empty and as long"
            )
        if days[0] != 0 or any(b <= a for a, b in itertools.pairwise(days)):
            raise ValueError(f"visit_days must start at 0 and increase strictly, got {days}")
        if factors[0] != 1.0 or any(f < 0 or not math.isfinite(f) for f in factors):
            raise ValueError(f"volume_factors must start at 1.0 and be >= 0, got {factors}")
        satellite = self.satellite_from_visit
        if satellite is not None and not 1 <= satellite < len(days):
            raise ValueError(f"satellite_from_visit must be in 1..{len(days) - 1}, got {satellite}")
        if self.downsample not in (1, 2):
            raise ValueError(f"downsample must be 1 or 2, got {self.downsample}")
        if self.max_rotation_deg < 0 or self.max_translation_mm < 0:
            raise ValueError("max_rotation_deg and max_translation_mm must be >= 0")


@dataclass
class PhantomVisit:
    """One visit of a series: a phantom case (posed, maybe downsampled) and its date."""

    study_date: date
    case: PhantomCase
    truth: dict[str, Any] = field(default_factory=dict)


def exponential_factors(rate_per_day: float, visit_days: tuple[int, ...]) -> tuple[float, ...]:
    """Volume factors of a constant exponential growth (> 0) or shrinkage (< 0) rate.

    Args:
        rate_per_day: ``d ln V / dt`` per day; the doubling time is ``ln 2 / rate``.
        visit_days: days since the first visit.

    Returns:
        ``exp(rate * day)`` per visit (1.0 at day 0).
    """
    return tuple(float(math.exp(rate_per_day * day)) for day in visit_days)


def _category(ratio: float, *, reference_empty: bool, current_empty: bool) -> str:
    if current_empty and not reference_empty:
        return "complete_response"
    if reference_empty:
        return "progression" if not current_empty else "stable"
    change = ratio - 1.0
    if change >= PROGRESSION_CHANGE:
        return "progression"
    if change <= PARTIAL_RESPONSE_CHANGE:
        return "partial_response"
    return "stable"


def _check_clear(ratio: float, what: str) -> None:
    for threshold in (1.0 + PROGRESSION_CHANGE, 1.0 + PARTIAL_RESPONSE_CHANGE):
        if ratio > 0 and abs(ratio / threshold - 1.0) < AMBIGUITY_MARGIN:
            raise ValueError(
                f"{what}: volume ratio {ratio:.3f} lies within {AMBIGUITY_MARGIN:.0%} of the "
                f"threshold {threshold:.2f}; the expected category would be ambiguous"
            )


def expected_responses(plan: SeriesPlan) -> list[dict[str, str | None]]:
    """Expected response categories of each visit, from the design alone (not the images).

    ``vs_previous`` compares a visit with the one before it. ``overall`` is RANO-style: a new
    lesion, or growth of ``PROGRESSION_CHANGE`` or more over the nadir (the smallest earlier
    volume, baseline included), is progression; otherwise disappearance is complete response
    and a change of ``PARTIAL_RESPONSE_CHANGE`` or less against the baseline partial response;
    anything else is stable. The first visit has no category (None).

    Raises:
        ValueError: a designed ratio within ``AMBIGUITY_MARGIN`` of a threshold.
    """
    factors = plan.volume_factors
    out: list[dict[str, str | None]] = [{"vs_previous": None, "overall": None}]
    for v in range(1, len(factors)):
        new_lesion_now = plan.satellite_from_visit is not None and v >= plan.satellite_from_visit
        new_since_previous = plan.satellite_from_visit == v
        current, previous = factors[v], factors[v - 1]
        nadir = min(factors[:v])
        ratios = {"previous": current / previous if previous else 0.0, "nadir": 0.0, "base": 0.0}
        if nadir:
            ratios["nadir"] = current / nadir
        ratios["base"] = current
        for name, ratio in ratios.items():
            if current and (name != "nadir" or nadir):
                _check_clear(ratio, f"visit {v} vs {name}")
        vs_previous = _category(
            ratios["previous"], reference_empty=previous == 0, current_empty=current == 0
        )
        if new_since_previous:
            vs_previous = "progression"
        progression = new_lesion_now or (
            _category(ratios["nadir"], reference_empty=nadir == 0, current_empty=current == 0)
            == "progression"
        )
        if progression:
            overall = "progression"
        else:
            overall = _category(ratios["base"], reference_empty=False, current_empty=current == 0)
            if overall == "progression":  # growth against baseline but not nadir: not PD
                overall = "stable"
        out.append({"vs_previous": vs_previous, "overall": overall})
    return out


def _rotation_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    rotation: np.ndarray = (
        np.eye(3) + math.sin(angle_rad) * k + (1.0 - math.cos(angle_rad)) * (k @ k)
    )
    return rotation


def draw_pose(rng: np.random.Generator, plan: SeriesPlan) -> dict[str, Any]:
    """A random rigid head pose: rotation about a random axis, translation per axis (mm)."""
    axis = rng.standard_normal(3)
    angle = float(rng.uniform(0.3, 1.0) * plan.max_rotation_deg)
    translation = rng.uniform(-plan.max_translation_mm, plan.max_translation_mm, 3)
    return {
        "rotation_axis": [float(v) for v in axis / np.linalg.norm(axis)],
        "rotation_deg": angle,
        "translation_mm": [float(v) for v in translation],
    }


def pose_matrix_ras(pose: dict[str, Any], centre_ras: np.ndarray) -> np.ndarray:
    """4x4 matrix of a pose in RAS mm: baseline-anatomy point -> visit point.

    The head turns about ``centre_ras`` (the brain centre) and then shifts.
    """
    angle = math.radians(pose["rotation_deg"])
    rotation = _rotation_matrix(np.asarray(pose["rotation_axis"]), angle)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre_ras - rotation @ centre_ras + np.asarray(pose["translation_mm"])
    return matrix


def _apply_pose(
    volume: np.ndarray, affine: np.ndarray, pose_ras: np.ndarray, *, order: int
) -> np.ndarray:
    """Resample ``volume`` so that the head sits in the posed position (same grid)."""
    # output voxel i holds the input at A^-1 P^-1 A i
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(pose_ras) @ affine
    posed: np.ndarray = ndimage.affine_transform(
        volume,
        voxel_map[:3, :3],
        offset=voxel_map[:3, 3],
        order=order,
        mode="constant",
        cval=0,
        output=volume.dtype,
    )
    return posed


def _scale_labels(labels: np.ndarray, centre_vox: np.ndarray, factor: float) -> np.ndarray:
    """Labels scaled about ``centre_vox`` by ``factor ** (1/3)`` per axis (nearest neighbour)."""
    out = np.zeros_like(labels)
    found = np.argwhere(labels > 0)
    if factor == 0 or found.size == 0:
        return out
    scale = factor ** (1.0 / 3.0)
    reach = np.abs(found - centre_vox).max(axis=0) * scale + 2.0
    lo = np.maximum(np.floor(centre_vox - reach), 0).astype(int)
    hi = np.minimum(np.ceil(centre_vox + reach) + 1, labels.shape).astype(int)
    # output voxel x (= lo + local) holds the input at c + (x - c) / s
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = ndimage.affine_transform(
        labels,
        np.full(3, 1.0 / scale),
        offset=centre_vox + (lo - centre_vox) / scale,
        output_shape=tuple(int(v) for v in hi - lo),
        order=0,
        mode="constant",
        cval=0,
        output=np.uint8,
    )
    return out


def _satellite(
    rng: np.random.Generator,
    brain: np.ndarray,
    white_matter_like: np.ndarray,
    tumour_reach: np.ndarray,
    spacing: float,
) -> tuple[np.ndarray, list[int]]:
    """Labels of a satellite lesion in deep brain, far from the main tumour (reach mask)."""
    coarse = (slice(None, None, 2),) * 3  # every 2nd voxel: plenty to choose a place
    inside = ndimage.distance_transform_edt(brain[coarse]) * 2 * spacing
    away = ndimage.distance_transform_edt(~tumour_reach[coarse]) * 2 * spacing
    candidates = np.argwhere(
        (inside > SATELLITE_EDEMA_RADIUS_MM + 8.0)
        & (away > SATELLITE_MIN_DISTANCE_MM)
        & white_matter_like[coarse]
    )
    if candidates.size == 0:
        raise ValueError("no room for a satellite lesion in this phantom")
    centre = candidates[int(rng.integers(len(candidates)))] * 2
    radius = math.ceil(SATELLITE_EDEMA_RADIUS_MM / spacing) + 1
    lo = np.maximum(centre - radius, 0)
    hi = np.minimum(centre + radius + 1, brain.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grid = np.indices(tuple(int(v) for v in hi - lo), dtype=np.float32)
    offsets = centre - lo
    distance = np.sqrt(sum((grid[k] - offsets[k]) ** 2 for k in range(3))) * spacing
    labels = np.zeros(brain.shape, dtype=np.uint8)
    local = labels[box]
    local[distance <= SATELLITE_EDEMA_RADIUS_MM] = 2
    local[distance <= SATELLITE_CORE_RADIUS_MM] = 3
    labels[~brain] = 0
    return labels, [int(v) for v in centre]


def _downsample_case(case: PhantomCase) -> PhantomCase:
    """2x2x2 block means of the images, majority label of each block; affine to match."""
    shape = tuple((n // 2) * 2 for n in case.segmentation.shape)
    crop = tuple(slice(0, n) for n in shape)
    small = tuple(n // 2 for n in shape)

    def blocks(volume: np.ndarray) -> np.ndarray:
        return volume[crop].reshape(small[0], 2, small[1], 2, small[2], 2)

    images = {
        name: blocks(image).mean(axis=(1, 3, 5), dtype=np.float32)
        for name, image in case.images.items()
    }
    # label counts of each block, summed over its 8 voxels (one strided view each): the same
    # counts as summing a 6-D block view per label, at a fraction of the time
    counts = np.zeros((4, *small), dtype=np.uint8)
    for offset in itertools.product((0, 1), repeat=3):
        voxels = case.segmentation[
            tuple(slice(o, n, 2) for o, n in zip(offset, shape, strict=True))
        ]
        for k in range(1, 4):
            counts[k] += voxels == k
    counts[0] = 8 - counts[1:].sum(axis=0, dtype=np.uint8)
    # majority of the block; ties go to the higher label (tumour over background)
    labels = (3 - np.argmax(counts[::-1], axis=0)).astype(np.uint8)
    half_voxel = np.eye(4)
    half_voxel[:3, :3] *= 2.0
    half_voxel[:3, 3] = 0.5
    affine = case.affine @ half_voxel
    return PhantomCase(case.case_id, images, labels, affine, dict(case.truth))


def generate_series(plan: SeriesPlan, series_id: str = "SERIES") -> list[PhantomVisit]:
    """Render every visit of a series (see the module docstring).

    Args:
        plan: the design.
        series_id: prefix of the visits' case ids (``<series_id>-V<k>``).

    Returns:
        The visits in date order, each with its truth: ``study_date``, ``day``,
        ``volumes_ml``, ``voxel_counts``, ``volume_factor``, ``pose`` (angles, translation and
        the 4x4 ``matrix_ras``), ``satellite``, ``expected_response``.

    Raises:
        ValueError: an invalid or ambiguous plan, or no room for the satellite.
    """
    expected = expected_responses(plan)
    anatomy = load_anatomy()
    rng = np.random.default_rng(np.random.SeedSequence(plan.seed, spawn_key=(7,)))
    params = PhantomParams(
        random_warp=False,
        phenotype_probs=(1.0, 0.0, 0.0, 0.0),  # necrotic core with an enhancing rim: ET present
        minimal_edema_prob=0.0,
        wt_volume_ml=plan.wt_volume_ml,
    )
    baseline, warped = generate_case_with_anatomy(
        case_seed(plan.seed, 0), f"{series_id}-BASE", params, anatomy
    )
    tumour = baseline.segmentation
    centre_vox = np.asarray(baseline.truth["params"]["placement"]["centre_case_voxel"])
    spacing = float(np.mean(anatomy.spacing_mm))
    reach = _scale_labels(tumour, centre_vox, max(plan.volume_factors)) > 0
    satellite_labels: np.ndarray | None = None
    satellite_centre: list[int] | None = None
    if plan.satellite_from_visit is not None:
        satellite_labels, satellite_centre = _satellite(
            rng, warped.brain, warped.tissue == 3, reach | (tumour > 0), spacing
        )
    brain_centre_vox = np.argwhere(warped.brain).mean(axis=0)
    brain_centre_ras = (anatomy.affine @ np.append(brain_centre_vox, 1.0))[:3]
    visits: list[PhantomVisit] = []
    for index, (day, factor) in enumerate(zip(plan.visit_days, plan.volume_factors, strict=True)):
        labels = _scale_labels(tumour, centre_vox, factor)
        labels[~warped.brain] = 0
        has_satellite = satellite_labels is not None and index >= (plan.satellite_from_visit or 0)
        if has_satellite and satellite_labels is not None:
            labels = np.where(satellite_labels > 0, satellite_labels, labels).astype(np.uint8)
        case, _ = generate_case_with_anatomy(
            case_seed(plan.seed, index + 1),
            f"{series_id}-V{index}",
            params,
            anatomy,
            tumour_labels=labels,
        )
        pose = draw_pose(rng, plan)
        matrix = pose_matrix_ras(pose, brain_centre_ras)
        if plan.downsample == 2:  # pose on the coarse grid: 8x fewer voxels to resample
            case = _downsample_case(case)
        images = {
            name: _apply_pose(image, case.affine, matrix, order=1)
            for name, image in case.images.items()
        }
        posed = PhantomCase(
            case.case_id,
            images,
            _apply_pose(case.segmentation, case.affine, matrix, order=0),
            case.affine,
            case.truth,
        )
        study_date = plan.first_date + timedelta(days=day)
        measured = compute_truth(posed.segmentation, posed.affine)
        truth = {
            "series_id": series_id,
            "series_version": SERIES_VERSION,
            "visit": index,
            "day": day,
            "study_date": study_date.isoformat(),
            "volume_factor": factor,
            "volumes_ml": measured["volumes_ml"],
            "voxel_counts": measured["voxel_counts"],
            "pose": {
                **pose,
                "centre_ras_mm": [float(v) for v in brain_centre_ras],
                "matrix_ras": matrix.tolist(),
            },
            "satellite": {"present": has_satellite, "centre_atlas_voxel": satellite_centre},
            "expected_response": expected[index],
            "affine": posed.affine.tolist(),
            "shape": list(posed.segmentation.shape),
            "generator_seed": case.truth["seed"],
        }
        posed.truth = truth
        visits.append(PhantomVisit(study_date=study_date, case=posed, truth=truth))
    return visits


def true_current_to_prior_ras(current: dict[str, Any], prior: dict[str, Any]) -> np.ndarray:
    """4x4 RAS matrix mapping a point of the current visit to the same anatomy in the prior.

    Args:
        current: truth of the current visit (``truth["pose"]["matrix_ras"]``).
        prior: truth of the prior visit.
    """
    current_pose = np.asarray(current["pose"]["matrix_ras"])
    prior_pose = np.asarray(prior["pose"]["matrix_ras"])
    mapped: np.ndarray = prior_pose @ np.linalg.inv(current_pose)
    return mapped
