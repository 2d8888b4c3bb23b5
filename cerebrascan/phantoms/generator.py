"""Deterministic generator of BraTS 2023-style synthetic tumour cases (pure maths).

One case is built in five steps, all driven by ``numpy.random.SeedSequence(seed)``:

1. :func:`sample_case_params` draws every random knob of the case (anatomy transform, mass
   effect, tumour geometry and phenotype, intensity levels, bias, noise, scale) without
   looking at any image.
2. The tumour centre is placed in supratentorial parenchyma of the atlas, far enough from the
   brain edge and the ventricles for the drawn size.
3. The atlas T1, brain and ventricle masks are resampled once (``map_coordinates``, order 1)
   through one coordinate map composing a mild global affine and a radial mass effect.
4. Labels are rendered on a box around the tumour (:mod:`cerebrascan.phantoms.tumour`).
5. Each modality is synthesised from the warped T1 (:mod:`cerebrascan.phantoms.contrasts`),
   the tumour blended in with partial-volume weights, then bias field, noise and a global
   scale are applied; the background is exactly 0.

Optional extras (all off by default: default cases keep bit-identical images and labels):
``random_warp=False`` keeps the atlas anatomy unwarped (identity affine, no mass effect),
``tumour_centre_atlas_voxel`` fixes the tumour centre, ``focus=True`` plants a small, strongly
enhancing, heterogeneous nodule in the enhancing tumour (``truth["focus"]``) and
``truth_structures`` warps SRI24 structure masks with the anatomy to record the exact tumour
to structure distances (``truth["structure_distances_mm"]``, ``truth["structure_overlap_ml"]``).
``tumour_type`` (default None) renders one of the tumour types of
:mod:`cerebrascan.phantoms.tumour_types` (site, phenotype and diagnosis labels in
``truth["diagnosis"]``), drawing from two extra random streams only.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy import ndimage

from cerebrascan.atlas.files import SRI24_STRUCTURES
from cerebrascan.phantoms.anatomy import Anatomy, load_anatomy
from cerebrascan.phantoms.contrasts import (
    LABEL_NAMES,
    MODALITIES,
    TISSUE_LEVELS,
    TUMOUR_LEVELS,
    blend_tumour_signal,
    estimate_tissue_means,
    normal_tissue_signal,
    partial_volume_weights,
    polynomial_bias_field,
    tissue_memberships,
)
from cerebrascan.phantoms.tumour import (
    PHENOTYPES,
    TumourShape,
    build_tumour_labels,
    plant_focus,
    quaternion_to_matrix,
    smooth_random_field,
)
from cerebrascan.phantoms.tumour_types import (
    ALL_TUMOUR_TYPES,
    TUMOUR_TYPES_VERSION,
    apply_tumour_type,
    draw_diagnosis,
    placement_pool,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.1.0"
_CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# appending a stream keeps the earlier ones unchanged (SeedSequence children are by index)
_STREAMS = ("params", "placement", "fields", "noise", "focus", "tumour_type", "tumour_site")
_NON_RANGE_TUPLES = ("phenotype_probs", "tumour_centre_atlas_voxel", "truth_structures")


@dataclass(frozen=True)
class PhantomParams:
    """Knobs of the phantom generator; ``(lo, hi)`` tuples are uniform sampling ranges.

    Attributes:
        rotation_max_deg: max rotation angle (about a random axis) of the global affine.
        scale_range: per-axis anatomy scale range of the global affine.
        translation_max_mm: max absolute translation along each axis.
        mass_effect_mm: radial displacement of the anatomy at the tumour edge.
        mass_effect_decay_mm: e-folding length of the displacement outside the tumour.
        wt_volume_ml: nominal whole-tumour volume range, sampled log-uniformly; the rendered
            volume is smaller when the edema is held back by grey matter, ventricles or the
            brain edge.
        axis_ratio_max: each core semi-axis is scaled by a factor in [1/r, r] (product 1).
        boundary_noise_mm: std of the smooth core-boundary perturbation.
        boundary_noise_scale_mm: correlation length of the boundary perturbation.
        min_core_radius_mm: smallest volume-equivalent core radius.
        phenotype_probs: probabilities of the phenotypes ``necrotic`` (NETC + ET rim),
            ``solid`` (ET only, no necrosis), ``non_enhancing`` (NETC only, no ET) and
            ``patchy`` (NETC with small ET patches), in that order.
        rim_thickness_mm: enhancing-rim thickness range.
        rim_noise_mm: std range of the rim-thickness perturbation.
        patchy_et_fraction: fraction of the rim enhancing in the patchy phenotype.
        core_fraction: nominal TC / WT volume fraction; sets the edema margin, which is then
            clipped to ``edema_margin_mm``.
        edema_margin_mm: how far edema reaches beyond the core in white matter.
        minimal_edema_prob: probability of a case with little or no edema.
        minimal_edema_margin_mm: edema margin range of those cases.
        edema_gm_factor: fraction of the margin reached in grey matter / CSF.
        edema_noise_mm: std range of the edema-boundary perturbation.
        supratentorial_prob: probability to place the centre in supratentorial parenchyma
            (otherwise anywhere in the brain).
        edge_clearance_mm: distance kept between the core ellipsoid (plus one boundary-noise
            std) and the brain edge; relaxed for tumours too big to fit anywhere.
        ventricle_clearance_mm: minimal distance of the centre from the ventricle region.
        tissue_level_jitter: relative std of the per-case CSF/GM levels on t2w/t2f.
        tumour_level_jitter: relative std of the per-case tumour label levels.
        texture_amplitude: relative std range of the within-label texture.
        texture_scale_mm: correlation length of the texture.
        edema_blend: fraction range of normal-tissue signal kept inside the edema.
        partial_volume_sigma_mm: blur of the label weights used for intensity blending.
        bias_amplitude: range of the multiplicative bias field amplitude (+-).
        snr: range of the signal-to-noise ratio (WM level / noise std).
        global_scale: range of the global intensity scale (log-uniform), arbitrary units.
        tail_gain: continuation of the T1-to-contrast mapping beyond the CSF/WM means.
        random_warp: False keeps the atlas anatomy unwarped: identity global affine and no
            mass effect (the knobs are still drawn, so every other draw is unchanged).
        tumour_centre_atlas_voxel: fixed tumour centre (atlas voxel indices, inside the
            brain) instead of a random placement; None draws it.
        focus: plant a high-grade focus: a ball of ``focus_radius_mm`` around a deep voxel of
            the enhancing tumour becomes ET with ``focus_t1c_gain`` times the ET t1c signal
            and a voxel-scale texture of relative std ``focus_heterogeneity``; its centre is
            ``truth["focus"]["centre_voxel"]`` (``truth["focus"]`` is None without ET).
        focus_radius_mm: radius of the focus ball.
        focus_t1c_gain: t1c signal of the focus relative to the surrounding ET (>= 1).
        focus_heterogeneity: relative std of the focus texture on t1c.
        truth_structures: SRI24 structure names (see
            :data:`cerebrascan.atlas.files.SRI24_STRUCTURES`)
            warped with the anatomy to record ``truth["structure_distances_mm"]`` (minimum
            distance between voxel centres of WT and the structure, 0 when they overlap) and
            ``truth["structure_overlap_ml"]``.
        tumour_type: None (default) keeps the generic glioma-like phantom; one of
            :data:`cerebrascan.phantoms.tumour_types.ALL_TUMOUR_TYPES` renders that type's
            site and phenotype and records its diagnosis labels in ``truth["diagnosis"]``.
    """

    rotation_max_deg: float = 6.0
    scale_range: tuple[float, float] = (0.93, 1.07)
    translation_max_mm: float = 4.0
    mass_effect_mm: tuple[float, float] = (1.0, 5.0)
    mass_effect_decay_mm: tuple[float, float] = (10.0, 25.0)
    wt_volume_ml: tuple[float, float] = (12.0, 180.0)
    axis_ratio_max: float = 1.5
    boundary_noise_mm: tuple[float, float] = (1.0, 4.0)
    boundary_noise_scale_mm: tuple[float, float] = (5.0, 10.0)
    min_core_radius_mm: float = 5.0
    phenotype_probs: tuple[float, float, float, float] = (0.55, 0.10, 0.15, 0.20)
    rim_thickness_mm: tuple[float, float] = (2.0, 7.0)
    rim_noise_mm: tuple[float, float] = (0.5, 1.5)
    patchy_et_fraction: tuple[float, float] = (0.05, 0.30)
    core_fraction: tuple[float, float] = (0.08, 0.75)
    edema_margin_mm: tuple[float, float] = (3.0, 25.0)
    minimal_edema_prob: float = 0.12
    minimal_edema_margin_mm: tuple[float, float] = (0.0, 2.0)
    edema_gm_factor: tuple[float, float] = (0.25, 0.5)
    edema_noise_mm: tuple[float, float] = (1.0, 3.0)
    supratentorial_prob: float = 0.9
    edge_clearance_mm: float = 2.0
    ventricle_clearance_mm: float = 4.0
    tissue_level_jitter: float = 0.05
    tumour_level_jitter: float = 0.08
    texture_amplitude: tuple[float, float] = (0.04, 0.10)
    texture_scale_mm: float = 1.5
    edema_blend: tuple[float, float] = (0.15, 0.35)
    partial_volume_sigma_mm: float = 0.8
    bias_amplitude: tuple[float, float] = (0.10, 0.20)
    snr: tuple[float, float] = (20.0, 40.0)
    global_scale: tuple[float, float] = (200.0, 4000.0)
    tail_gain: float = 0.3
    random_warp: bool = True
    tumour_centre_atlas_voxel: tuple[int, int, int] | None = None
    focus: bool = False
    focus_radius_mm: float = 3.0
    focus_t1c_gain: float = 1.6
    focus_heterogeneity: float = 0.25
    truth_structures: tuple[str, ...] = ()
    tumour_type: str | None = None

    def __post_init__(self) -> None:
        """Validate ranges and probabilities; errors name the offending field and value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and f.name not in _NON_RANGE_TUPLES:
                if len(value) != 2 or not value[0] <= value[1]:
                    raise ValueError(f"{f.name} must be a (lo, hi) pair with lo <= hi, got {value}")
                if value[0] < 0:
                    raise ValueError(f"{f.name} must be non-negative, got {value}")
            elif isinstance(value, int | float) and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
        positive_lo = ("scale_range", "wt_volume_ml", "boundary_noise_scale_mm", "snr")
        for name in (*positive_lo, "mass_effect_decay_mm", "global_scale"):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        probs = self.phenotype_probs
        if len(probs) != len(PHENOTYPES) or min(probs) < 0 or not math.isclose(sum(probs), 1.0):
            raise ValueError(
                f"phenotype_probs must be {len(PHENOTYPES)} non-negative values summing to 1 "
                f"(order {PHENOTYPES}), got {probs}"
            )
        for name in ("minimal_edema_prob", "supratentorial_prob"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.axis_ratio_max < 1:
            raise ValueError(f"axis_ratio_max must be >= 1, got {self.axis_ratio_max}")
        if self.min_core_radius_mm <= 0 or self.texture_scale_mm <= 0:
            raise ValueError(
                "min_core_radius_mm and texture_scale_mm must be > 0, got "
                f"{self.min_core_radius_mm} and {self.texture_scale_mm}"
            )
        if self.bias_amplitude[1] > 0.9 or self.edema_blend[1] > 1 or self.tail_gain > 1:
            raise ValueError(
                f"bias_amplitude <= 0.9, edema_blend <= 1 and tail_gain <= 1 required, got "
                f"{self.bias_amplitude}, {self.edema_blend}, {self.tail_gain}"
            )
        if max(self.patchy_et_fraction[1], self.edema_gm_factor[1], self.core_fraction[1]) > 1:
            raise ValueError(
                f"patchy_et_fraction, edema_gm_factor and core_fraction must lie in [0, 1], "
                f"got {self.patchy_et_fraction}, {self.edema_gm_factor}, {self.core_fraction}"
            )
        centre = self.tumour_centre_atlas_voxel
        if centre is not None and (len(centre) != 3 or any(int(v) != v for v in centre)):
            raise ValueError(f"tumour_centre_atlas_voxel must be 3 integers, got {centre}")
        if self.focus_radius_mm <= 0 or self.focus_t1c_gain < 1:
            raise ValueError(
                f"focus_radius_mm must be > 0 and focus_t1c_gain >= 1, got "
                f"{self.focus_radius_mm} and {self.focus_t1c_gain}"
            )
        if self.tumour_type is not None and self.tumour_type not in ALL_TUMOUR_TYPES:
            raise ValueError(
                f"tumour_type must be None or one of {ALL_TUMOUR_TYPES}, got {self.tumour_type!r}"
            )
        unknown = [name for name in self.truth_structures if name not in SRI24_STRUCTURES]
        if unknown:
            raise ValueError(
                f"truth_structures has unknown names {unknown}; choose from {SRI24_STRUCTURES}"
            )


@dataclass
class PhantomCase:
    """One synthetic case.

    Attributes:
        case_id: identifier, e.g. ``PHANTOM-00000-000``.
        images: ``{"t1n", "t1c", "t2w", "t2f"}`` float32 volumes, 0 outside the brain.
        segmentation: uint8 labels (0 background, 1 NETC, 2 SNFH, 3 ET).
        affine: 4x4 float64 voxel-to-RAS affine (the atlas affine).
        truth: JSON-serialisable ground truth and drawn parameters.
    """

    case_id: str
    images: dict[str, np.ndarray]
    segmentation: np.ndarray
    affine: np.ndarray
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass
class WarpedAnatomy:
    """Case-space anatomy (full grid), useful to inspect and test a case.

    Attributes:
        t1: float32 warped atlas T1.
        brain: bool case brain mask (warped atlas brain).
        ventricles: bool warped ventricular CSF.
        tissue: uint8 dominant tissue class (0 outside, 1 CSF, 2 GM, 3 WM) of the normal
            anatomy, ignoring the tumour.
        structures: bool warped SRI24 structure masks of ``PhantomParams.truth_structures``.
    """

    t1: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    tissue: np.ndarray
    structures: dict[str, np.ndarray] = field(default_factory=dict)


def case_seed(cohort_seed: int, index: int) -> int:
    """Seed of case ``index`` of a cohort, independent of the cohort size.

    Args:
        cohort_seed: non-negative cohort seed.
        index: non-negative case index.

    Returns:
        A non-negative 63-bit integer seed.

    Raises:
        ValueError: for a negative seed or index.
    """
    if cohort_seed < 0:
        raise ValueError(f"cohort_seed must be >= 0, got {cohort_seed}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    sequence = np.random.SeedSequence(cohort_seed, spawn_key=(index,))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    children = np.random.SeedSequence(int(seed)).spawn(len(_STREAMS))
    return {
        name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)
    }


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def sample_case_params(seed: int, params: PhantomParams = PhantomParams()) -> dict[str, Any]:
    """Draw every image-independent random knob of a case (the parameter sampler).

    The same seed gives the same draws as :func:`generate_case` uses.

    Args:
        seed: non-negative case seed.
        params: generator knobs.

    Returns:
        JSON-serialisable nested dict with keys ``anatomy_transform``, ``mass_effect``,
        ``tumour`` and ``intensity``.

    Raises:
        ValueError: for a negative seed.
    """
    rng = _rngs(seed)["params"]
    axis = rng.standard_normal(3)
    transform = {
        "rotation_axis": [float(v) for v in axis / np.linalg.norm(axis)],
        "rotation_deg": _uniform(rng, (0.0, params.rotation_max_deg)),
        "scale": [_uniform(rng, params.scale_range) for _ in range(3)],
        "translation_vox": [
            _uniform(rng, (-params.translation_max_mm, params.translation_max_mm)) for _ in range(3)
        ],
    }
    phenotype = str(rng.choice(PHENOTYPES, p=np.asarray(params.phenotype_probs)))
    wt_target_ml = _log_uniform(rng, params.wt_volume_ml)
    wt_radius = (3.0 * wt_target_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    minimal_edema = bool(rng.uniform() < params.minimal_edema_prob)
    core_fraction = _uniform(rng, params.core_fraction)
    if minimal_edema:
        margin = _uniform(rng, params.minimal_edema_margin_mm)
    else:
        margin = wt_radius * (1.0 - core_fraction ** (1.0 / 3.0))
        margin = float(np.clip(margin, *params.edema_margin_mm))
    core_radius = max(wt_radius - margin, params.min_core_radius_mm)
    log_scales = rng.uniform(-np.log(params.axis_ratio_max), np.log(params.axis_ratio_max), 3)
    axis_scales = np.exp(log_scales - log_scales.mean())
    quaternion = rng.standard_normal(4)
    quaternion /= np.linalg.norm(quaternion)
    boundary_noise = min(_uniform(rng, params.boundary_noise_mm), 0.25 * core_radius)
    tumour = {
        "phenotype": phenotype,
        "wt_target_ml": wt_target_ml,
        "minimal_edema": minimal_edema,
        "core_fraction": core_fraction,
        "core_radius_mm": core_radius,
        "axis_scales": [float(s) for s in axis_scales],
        "orientation": [float(q) for q in quaternion],
        "boundary_noise_mm": boundary_noise,
        "boundary_noise_scale_mm": _uniform(rng, params.boundary_noise_scale_mm),
        "rim_thickness_mm": _uniform(rng, params.rim_thickness_mm),
        "rim_noise_mm": _uniform(rng, params.rim_noise_mm),
        "patchy_et_fraction": _uniform(rng, params.patchy_et_fraction),
        "edema_margin_mm": margin,
        "edema_gm_factor": _uniform(rng, params.edema_gm_factor),
        "edema_noise_mm": min(_uniform(rng, params.edema_noise_mm), 0.4 * margin),
        "supratentorial": bool(rng.uniform() < params.supratentorial_prob),
    }
    mass_effect = {
        "displacement_mm": _uniform(rng, params.mass_effect_mm),
        "decay_mm": _uniform(rng, params.mass_effect_decay_mm),
    }

    def jitter(sd: float) -> float:
        return float(np.exp(np.clip(rng.standard_normal(), -2.5, 2.5) * sd))

    tissue_levels = {
        mod: {
            tissue: (level if tissue == "wm" else level * jitter(params.tissue_level_jitter))
            for tissue, level in TISSUE_LEVELS[mod].items()
        }
        for mod in TISSUE_LEVELS
    }
    tumour_levels = {
        mod: {
            name: TUMOUR_LEVELS[mod][name] * jitter(params.tumour_level_jitter)
            for name in LABEL_NAMES.values()
        }
        for mod in MODALITIES
    }
    intensity = {
        "tissue_levels": tissue_levels,
        "tumour_levels": tumour_levels,
        "texture_amplitude": _uniform(rng, params.texture_amplitude),
        "edema_blend": _uniform(rng, params.edema_blend),
        "global_scale": {mod: _log_uniform(rng, params.global_scale) for mod in MODALITIES},
        "snr": {mod: _uniform(rng, params.snr) for mod in MODALITIES},
        "bias_amplitude": {mod: _uniform(rng, params.bias_amplitude) for mod in MODALITIES},
        "bias_coefficients": {
            mod: [float(c) for c in rng.standard_normal(9)] for mod in MODALITIES
        },
    }
    if not params.random_warp:
        transform = {
            **transform,
            "rotation_deg": 0.0,
            "scale": [1.0, 1.0, 1.0],
            "translation_vox": [0.0, 0.0, 0.0],
        }
        mass_effect = {**mass_effect, "displacement_mm": 0.0}
    drawn = {
        "anatomy_transform": transform,
        "mass_effect": mass_effect,
        "tumour": tumour,
        "intensity": intensity,
    }
    if params.tumour_type is not None:
        type_rng = _rngs(seed)["tumour_type"]
        diagnosis = draw_diagnosis(params.tumour_type, type_rng)
        drawn = apply_tumour_type(drawn, diagnosis, type_rng, params.min_core_radius_mm)
        drawn["diagnosis"] = diagnosis
    return drawn


def tumour_shape_from_params(tumour: dict[str, Any]) -> TumourShape:
    """Build the :class:`TumourShape` from the ``tumour`` part of :func:`sample_case_params`."""
    return TumourShape(
        phenotype=tumour["phenotype"],
        core_radius_mm=tumour["core_radius_mm"],
        axis_scales=tuple(tumour["axis_scales"]),
        orientation=tuple(tumour["orientation"]),
        boundary_noise_mm=tumour["boundary_noise_mm"],
        boundary_noise_scale_mm=tumour["boundary_noise_scale_mm"],
        rim_thickness_mm=tumour["rim_thickness_mm"],
        rim_noise_mm=tumour["rim_noise_mm"],
        patchy_et_fraction=tumour["patchy_et_fraction"],
        edema_margin_mm=tumour["edema_margin_mm"],
        edema_gm_factor=tumour["edema_gm_factor"],
        edema_noise_mm=tumour["edema_noise_mm"],
    )


@dataclass(frozen=True)
class _PlacementTable:
    centroid: np.ndarray  # brain centroid (voxel coords) = centre of the global affine
    bbox: tuple[np.ndarray, np.ndarray]  # brain bbox (inclusive lo, exclusive hi)
    coords: np.ndarray  # (N, 3) int16 brain voxels
    edge_mm: np.ndarray  # distance to the brain edge
    ventricle_mm: np.ndarray  # distance to the ventricle region
    supratentorial: np.ndarray  # bool


@functools.lru_cache(maxsize=4)
def _placement_table(anatomy: Anatomy) -> _PlacementTable:
    brain = anatomy.brain
    idx = np.argwhere(brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    padded = np.pad(brain[box], 1)
    edge = ndimage.distance_transform_edt(padded)[1:-1, 1:-1, 1:-1]
    region = anatomy.ventricle_region[box]
    if region.any():
        vent = ndimage.distance_transform_edt(~region)
    else:
        vent = np.full(region.shape, np.inf)
    inside = brain[box]
    return _PlacementTable(
        centroid=idx.mean(axis=0),
        bbox=(lo, hi),
        coords=idx.astype(np.int16),
        edge_mm=edge[inside].astype(np.float32),
        ventricle_mm=vent[inside].astype(np.float32),
        supratentorial=anatomy.supratentorial[box][inside],
    )


def _place_centre(
    table: _PlacementTable,
    shape: TumourShape,
    supratentorial: bool,
    params: PhantomParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pick the tumour centre (atlas voxel) far enough from the brain edge and ventricles."""
    semi = shape.semi_axes_mm
    need_edge = float(semi.max()) + shape.boundary_noise_mm + params.edge_clearance_mm
    need_vent = params.ventricle_clearance_mm + 0.5 * float(semi.min())
    pool = table.supratentorial if supratentorial else np.ones_like(table.supratentorial)
    score = np.minimum(table.edge_mm / need_edge, table.ventricle_mm / need_vent)
    score = np.where(pool & (table.ventricle_mm > 0), score, -1.0)
    feasible = np.flatnonzero(score >= 1.0)
    relaxed = feasible.size < 20
    if relaxed:  # tumour too big to fit with full clearance: take the best spots
        feasible = np.argsort(score, kind="stable")[-20:]
    pick = int(feasible[rng.integers(feasible.size)])
    info = {
        "centre_atlas_voxel": [int(v) for v in table.coords[pick]],
        "edge_distance_mm": float(table.edge_mm[pick]),
        "ventricle_distance_mm": float(table.ventricle_mm[pick]),
        "required_edge_mm": need_edge,
        "required_ventricle_mm": need_vent,
        "clearance_relaxed": bool(relaxed),
        "candidates": int(feasible.size),
    }
    return table.coords[pick].astype(np.float64), info


_TYPED_PLACEMENT_STRUCTURES = ("brainstem", "frontal_lobe", "insula")


def _place_typed_centre(
    anatomy: Anatomy,
    table: _PlacementTable,
    shape: TumourShape,
    diagnosis: dict[str, Any],
    params: PhantomParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pick the centre of a typed tumour in its site (see ``tumour_types.placement_pool``)."""
    index = tuple(table.coords[:, k].astype(np.intp) for k in range(3))
    structures = {
        name: np.asarray(anatomy.structures[name])[index]
        for name in _TYPED_PLACEMENT_STRUCTURES
        if name in anatomy.structures
    }
    site, pool, intra_axial = placement_pool(
        diagnosis["tumour_type"],
        diagnosis,
        table.coords,
        table.edge_mm,
        table.ventricle_mm,
        table.supratentorial,
        structures,
        rng,
    )
    if not pool.any():
        raise ValueError(f"no atlas voxel fits site {site!r} of {diagnosis['tumour_type']!r}")
    if intra_axial:
        semi = shape.semi_axes_mm
        need_edge = float(semi.max()) + shape.boundary_noise_mm + params.edge_clearance_mm
        score = np.where(pool, table.edge_mm / need_edge, -1.0)
        feasible = np.flatnonzero(score >= 1.0)
        if feasible.size < 20:  # too big for full clearance: the deepest spots of the site
            feasible = np.argsort(score, kind="stable")[-20:]
    else:
        feasible = np.flatnonzero(pool)
    pick = int(feasible[rng.integers(feasible.size)])
    info = {
        "centre_atlas_voxel": [int(v) for v in table.coords[pick]],
        "edge_distance_mm": float(table.edge_mm[pick]),
        "ventricle_distance_mm": float(table.ventricle_mm[pick]),
        "site": site,
        "intra_axial": bool(intra_axial),
        "candidates": int(feasible.size),
    }
    return table.coords[pick].astype(np.float64), info


def _fixed_centre(
    anatomy: Anatomy, voxel: tuple[int, int, int]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The requested tumour centre (atlas voxel), checked to lie inside the atlas brain."""
    index = tuple(int(v) for v in voxel)
    inside = all(0 <= v < n for v, n in zip(index, anatomy.shape, strict=True))
    if not inside or not anatomy.brain[index]:
        raise ValueError(
            f"tumour_centre_atlas_voxel {list(index)} is not inside the atlas brain "
            f"(grid {anatomy.shape})"
        )
    info = {"centre_atlas_voxel": list(index), "fixed": True}
    return np.asarray(index, dtype=np.float64), info


def _structure_truth(
    tumour: np.ndarray,
    structures: dict[str, np.ndarray],
    spacing_mm: tuple[float, float, float],
    affine: np.ndarray,
) -> dict[str, Any]:
    """Exact WT-to-structure distances (mm, between voxel centres) and overlaps (mL).

    Uses a Euclidean distance transform of the tumour's complement with the voxel spacing,
    so the distance of a structure is the smallest centre-to-centre distance from any of its
    voxels to any tumour voxel (0 when they overlap). All arrays share one grid.
    """
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    if not tumour.any():
        return {
            "structure_distances_mm": {name: None for name in structures},
            "structure_overlap_ml": {name: 0.0 for name in structures},
        }
    distance = ndimage.distance_transform_edt(~tumour, sampling=spacing_mm)
    distances: dict[str, float | None] = {}
    overlaps: dict[str, float] = {}
    for name, mask in structures.items():
        overlaps[name] = _json_float(np.count_nonzero(mask & tumour) * voxel_ml)
        distances[name] = _json_float(distance[mask].min()) if mask.any() else None
    return {"structure_distances_mm": distances, "structure_overlap_ml": overlaps}


def _global_affine(transform: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Matrix A and vector t of the atlas-to-case map ``y = A (s - c0) + c0 + t``."""
    half_angle = 0.5 * math.radians(transform["rotation_deg"])
    axis = np.asarray(transform["rotation_axis"], dtype=np.float64)
    quaternion = (math.cos(half_angle), *(math.sin(half_angle) * axis))
    rotation = quaternion_to_matrix(quaternion)
    matrix = np.diag(transform["scale"]) @ rotation
    return matrix, np.asarray(transform["translation_vox"], dtype=np.float64)


def build_coordinate_map(
    out_lo: np.ndarray,
    out_shape: tuple[int, int, int],
    matrix: np.ndarray,
    translation: np.ndarray,
    affine_centre: np.ndarray,
    tumour_centre: np.ndarray,
    displacement_mm: float,
    edge_radius_mm: float,
    decay_mm: float,
) -> np.ndarray:
    """Atlas voxel coordinates sampled by each case voxel of a box (one composed map).

    The case-to-atlas map undoes the radial mass effect around ``tumour_centre`` (case
    voxel coordinates), then the global affine ``y = A (s - c0) + c0 + t``. The displacement
    is ``d * r / R`` inside the tumour radius ``R`` and ``d * exp(-(r - R) / decay)`` outside,
    so anatomy is pushed outward by ``d`` mm at the tumour edge and the map stays monotone.

    Args:
        out_lo: first case voxel of the box.
        out_shape: box shape.
        matrix: 3x3 matrix ``A`` of the atlas-to-case affine.
        translation: ``t`` of the atlas-to-case affine (voxels).
        affine_centre: ``c0`` (atlas voxels).
        tumour_centre: centre of the mass effect (case voxels).
        displacement_mm: ``d``; 0 disables the mass effect.
        edge_radius_mm: ``R``, must exceed ``d``.
        decay_mm: e-folding length of the displacement outside ``R``.

    Returns:
        float32 array of shape ``(3, *out_shape)``.

    Raises:
        ValueError: if ``displacement_mm >= edge_radius_mm`` (the map would fold).
    """
    if displacement_mm >= edge_radius_mm:
        raise ValueError(
            f"displacement_mm ({displacement_mm}) must be < edge_radius_mm ({edge_radius_mm})"
        )
    inverse = np.linalg.inv(matrix)
    offsets = [
        (np.arange(n, dtype=np.float32) + np.float32(lo - c)).reshape(
            [-1 if k == axis else 1 for k in range(3)]
        )
        for axis, (n, lo, c) in enumerate(zip(out_shape, out_lo, tumour_centre, strict=True))
    ]
    if displacement_mm > 0:
        r = np.sqrt(offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2)
        inside = np.float32(displacement_mm / edge_radius_mm)
        outside = (
            np.float32(displacement_mm)
            * np.exp(-(r - np.float32(edge_radius_mm)) / np.float32(decay_mm))
            / np.maximum(r, np.float32(1e-6))
        )
        factor = 1.0 - np.where(r < edge_radius_mm, inside, outside)
    else:
        factor = np.ones(out_shape, dtype=np.float32)
    constant = inverse @ (np.asarray(tumour_centre) - affine_centre - translation) + affine_centre
    coords = np.empty((3, *out_shape), dtype=np.float32)
    for k in range(3):
        linear = (
            np.float32(inverse[k, 0]) * offsets[0]
            + np.float32(inverse[k, 1]) * offsets[1]
            + np.float32(inverse[k, 2]) * offsets[2]
        )
        np.multiply(linear, factor, out=coords[k])
        coords[k] += np.float32(constant[k])
    return coords


def _json_float(value: float) -> float:
    return float(round(float(value), 6))


def compute_truth(segmentation: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Volumes, counts, centre and extent of a segmentation (exact to the voxel).

    Args:
        segmentation: uint8 labels (0, 1 NETC, 2 SNFH, 3 ET).
        affine: 4x4 voxel-to-RAS affine.

    Returns:
        Dict with ``voxel_counts``, ``volumes_ml``, ``centre_voxel``, ``centre_ras_mm`` and
        ``extent_voxels`` (``None`` centre/extent when the segmentation is empty).

    Raises:
        ValueError: if the segmentation holds labels outside {0, 1, 2, 3}.
    """
    counts = np.bincount(segmentation.ravel(), minlength=4)
    if counts.size > 4:
        raise ValueError(f"segmentation labels must be in {{0,1,2,3}}, got max {counts.size - 1}")
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    voxel_counts = {
        "NETC": int(counts[1]),
        "SNFH": int(counts[2]),
        "ET": int(counts[3]),
        "TC": int(counts[1] + counts[3]),
        "WT": int(counts[1] + counts[2] + counts[3]),
    }
    volumes = {name: n * voxel_mm3 / 1000.0 for name, n in voxel_counts.items()}
    idx = np.nonzero(segmentation)
    centre_voxel: list[float] | None = None
    centre_ras: list[float] | None = None
    extent: dict[str, list[int]] | None = None
    if idx[0].size:
        coords = np.stack(idx, axis=1)
        labels = segmentation[idx]
        core = (labels == 1) | (labels == 3)
        chosen = coords[core] if core.any() else coords
        centre = chosen.mean(axis=0)
        centre_voxel = [_json_float(v) for v in centre]
        centre_ras = [_json_float(v) for v in (np.asarray(affine) @ np.append(centre, 1.0))[:3]]
        extent = {
            "min": [int(v) for v in coords.min(axis=0)],
            "max": [int(v) for v in coords.max(axis=0)],
        }
    return {
        "volumes_ml": volumes,
        "voxel_counts": voxel_counts,
        "centre_voxel": centre_voxel,
        "centre_ras_mm": centre_ras,
        "extent_voxels": extent,
    }


def _brain_box(
    anatomy: Anatomy,
    table: _PlacementTable,
    matrix: np.ndarray,
    translation: np.ndarray,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = table.bbox
    corners = np.array([[c[0], c[1], c[2]] for c in np.ndindex(2, 2, 2)], dtype=np.float64)
    corners = lo + corners * (hi - 1 - lo)
    mapped = (corners - table.centroid) @ matrix.T + table.centroid + translation
    out_lo = np.maximum(np.floor(mapped.min(axis=0) - margin), 0).astype(int)
    out_hi = np.minimum(np.ceil(mapped.max(axis=0) + margin) + 1, anatomy.shape).astype(int)
    return out_lo, out_hi


def _box_shape(lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int]:
    """Shape of the box from voxel ``lo`` to ``hi`` (exclusive)."""
    extent = hi - lo
    return (int(extent[0]), int(extent[1]), int(extent[2]))


@dataclass(frozen=True)
class _TumourPlacement:
    """Step 2: where the tumour sits.

    Attributes:
        centre: tumour centre in case voxel coordinates (float64).
        info: the truth record's ``params.placement``.
        matrix: 3x3 matrix ``A`` of the atlas-to-case global affine.
        translation: its translation ``t`` (voxels).
    """

    centre: np.ndarray
    info: dict[str, Any]
    matrix: np.ndarray
    translation: np.ndarray


@dataclass(frozen=True)
class _WarpedCrop:
    """Step 3: the atlas resampled into case space over the case's brain box.

    Attributes:
        lo: first case voxel of the box.
        hi: end (exclusive) of the box.
        t1: float32 warped T1, 0 outside the brain.
        brain: bool warped brain.
        ventricles: bool warped ventricles, inside the brain.
        structures: bool warped SRI24 structures of ``PhantomParams.truth_structures``.
        edge_radius_mm: radius ``R`` of the mass effect.
    """

    lo: np.ndarray
    hi: np.ndarray
    t1: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    structures: dict[str, np.ndarray]
    edge_radius_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the box."""
        return _box_shape(self.lo, self.hi)

    @property
    def region(self) -> tuple[slice, ...]:
        """The box as slices of the full grid."""
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi, strict=True))


@dataclass(frozen=True)
class _TissueModel:
    """Tissue classes of the warped T1's brain voxels.

    Attributes:
        means: (CSF, GM, WM) T1 class means.
        t1_brain: the warped T1 of the brain voxels (in ``np.nonzero`` order).
        memberships: ``(n, 3)`` CSF / GM / WM memberships of those voxels.
    """

    means: tuple[float, float, float]
    t1_brain: np.ndarray
    memberships: np.ndarray


@dataclass(frozen=True)
class _Focus:
    """The enhancing nodule planted in the tumour (``PhantomParams.focus``).

    Attributes:
        weight: partial-volume weight of the nodule on the tumour box.
        texture: its heterogeneity field on the tumour box.
        truth: the truth record's ``focus``.
    """

    weight: np.ndarray
    texture: np.ndarray
    truth: dict[str, Any]


@dataclass(frozen=True)
class _TumourBox:
    """Step 4: the tumour labels on a box of the crop.

    Attributes:
        box: the box, as slices of the crop.
        labels: uint8 labels on the box.
        focus: the planted nodule; None when off or when there is no enhancing tumour.
    """

    box: tuple[slice, ...]
    labels: np.ndarray
    focus: _Focus | None


def _place_tumour(
    anatomy: Anatomy,
    table: _PlacementTable,
    shape: TumourShape,
    drawn: dict[str, Any],
    params: PhantomParams,
    rngs: dict[str, np.random.Generator],
) -> _TumourPlacement:
    """Step 2: the tumour centre in the atlas (its site, drawn, or fixed), then in case space.

    Draws from the ``tumour_site`` stream (a typed tumour) or the ``placement`` stream.
    """
    if params.tumour_centre_atlas_voxel is None and params.tumour_type is not None:
        centre_src, info = _place_typed_centre(
            anatomy, table, shape, drawn["diagnosis"], params, rngs["tumour_site"]
        )
    elif params.tumour_centre_atlas_voxel is None:
        centre_src, info = _place_centre(
            table, shape, drawn["tumour"]["supratentorial"], params, rngs["placement"]
        )
    else:
        centre_src, info = _fixed_centre(anatomy, params.tumour_centre_atlas_voxel)
    matrix, translation = _global_affine(drawn["anatomy_transform"])
    centre = matrix @ (centre_src - table.centroid) + table.centroid + translation
    info["centre_case_voxel"] = [_json_float(v) for v in centre]
    return _TumourPlacement(centre=centre, info=info, matrix=matrix, translation=translation)


def _warp_anatomy(
    anatomy: Anatomy,
    table: _PlacementTable,
    placement: _TumourPlacement,
    shape: TumourShape,
    mass: dict[str, Any],
    truth_structures: tuple[str, ...],
) -> _WarpedCrop:
    """Step 3: resample the atlas T1, brain, ventricles (and truth structures) once through one
    coordinate map over the case's brain box (no random draw).

    Raises:
        ValueError: a truth structure is not in the anatomy.
    """
    edge_radius = max(float(shape.semi_axes_mm.mean()), mass["displacement_mm"] + 1.0)
    out_lo, out_hi = _brain_box(
        anatomy,
        table,
        placement.matrix,
        placement.translation,
        margin=mass["displacement_mm"] + 2.0,
    )
    coords = build_coordinate_map(
        out_lo,
        _box_shape(out_lo, out_hi),
        placement.matrix,
        placement.translation,
        table.centroid,
        placement.centre,
        mass["displacement_mm"],
        edge_radius,
        mass["decay_mm"],
    )
    sample = functools.partial(
        ndimage.map_coordinates,
        coordinates=coords,
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
        output=np.float32,
    )
    t1 = sample(anatomy.t1)
    brain = sample(anatomy.brain.astype(np.float32)) > 0.5
    ventricles = (sample(anatomy.ventricles.astype(np.float32)) > 0.5) & brain
    missing = [name for name in truth_structures if name not in anatomy.structures]
    if missing:
        raise ValueError(
            f"truth_structures {missing} are not in the anatomy "
            f"(it has {sorted(anatomy.structures)})"
        )
    structures = {
        name: (sample(anatomy.structures[name].astype(np.float32)) > 0.5) & brain
        for name in truth_structures
    }
    t1[~brain] = 0.0
    return _WarpedCrop(
        lo=out_lo,
        hi=out_hi,
        t1=t1,
        brain=brain,
        ventricles=ventricles,
        structures=structures,
        edge_radius_mm=edge_radius,
    )


def _tissue_model(crop: _WarpedCrop) -> _TissueModel:
    """Tissue memberships of the warped T1 (no random draw)."""
    means = estimate_tissue_means(crop.t1[crop.brain])
    t1_brain = crop.t1[crop.brain]
    return _TissueModel(
        means=means, t1_brain=t1_brain, memberships=tissue_memberships(t1_brain, means)
    )


def _render_tumour(
    shape: TumourShape,
    crop: _WarpedCrop,
    tissue: _TissueModel,
    placement: _TumourPlacement,
    params: PhantomParams,
    rngs: dict[str, np.random.Generator],
    affine: np.ndarray,
    case_id: str,
    tumour_labels: np.ndarray | None,
) -> _TumourBox:
    """Step 4: the tumour labels on a box around the centre, and the optional focus.

    Draws from the ``fields`` stream (the labels are drawn even when ``tumour_labels``
    replaces them, so that every later draw is unchanged) and the ``focus`` stream.
    """
    white_matter = np.zeros(crop.shape, dtype=np.float32)
    white_matter[crop.brain] = tissue.memberships[:, 2]
    reach = shape.reach_mm()
    c_local = placement.centre - crop.lo
    box_lo = np.maximum(np.floor(c_local - reach), 0).astype(int)
    box_hi = np.minimum(np.ceil(c_local + reach) + 1, crop.shape).astype(int)
    box = tuple(slice(int(a), int(b)) for a, b in zip(box_lo, box_hi, strict=True))
    wm_box = ndimage.gaussian_filter(white_matter[box], sigma=2.0, mode="nearest")
    labels_box = build_tumour_labels(
        shape, c_local - box_lo, crop.brain[box], crop.ventricles[box], wm_box, rngs["fields"]
    )
    if tumour_labels is not None:  # a caller-given tumour replaces the drawn one
        box, labels_box = _given_tumour_box(tumour_labels, params, crop.lo, crop.hi, c_local)
    if not params.focus:
        return _TumourBox(box=box, labels=labels_box, focus=None)
    labels_box, focus_centre, focus_ball = plant_focus(
        labels_box, params.focus_radius_mm, rngs["focus"]
    )
    if focus_centre is None:
        logger.warning("%s: no enhancing tumour, no focus planted", case_id)
        return _TumourBox(box=box, labels=labels_box, focus=None)
    weight = ndimage.gaussian_filter(
        focus_ball.astype(np.float32), sigma=params.partial_volume_sigma_mm
    )
    texture = smooth_random_field(rngs["focus"], labels_box.shape, 1.0)
    # the drawn box's corner, as before: a given tumour's box may start elsewhere
    centre_voxel = [int(v) for v in focus_centre + box_lo + crop.lo]
    truth = {
        "centre_voxel": centre_voxel,
        "centre_ras_mm": [
            _json_float(v) for v in (affine @ np.append(np.asarray(centre_voxel, float), 1.0))[:3]
        ],
        "radius_mm": params.focus_radius_mm,
        "voxels": int(focus_ball.sum()),
        "t1c_gain": params.focus_t1c_gain,
        "heterogeneity": params.focus_heterogeneity,
    }
    return _TumourBox(
        box=box, labels=labels_box, focus=_Focus(weight=weight, texture=texture, truth=truth)
    )


def _synthesise_images(
    grid_shape: tuple[int, int, int],
    crop: _WarpedCrop,
    tissue: _TissueModel,
    tumour: _TumourBox,
    intensity: dict[str, Any],
    params: PhantomParams,
    rngs: dict[str, np.random.Generator],
) -> dict[str, np.ndarray]:
    """Step 5: each modality from the warped T1, the tumour blended in with partial-volume
    weights, then bias field, noise and a global scale; 0 outside the brain.

    Draws the texture from the ``fields`` stream (after the labels), then the noise of each
    modality from the ``noise`` stream, in :data:`MODALITIES` order.
    """
    labels_box, box, brain = tumour.labels, tumour.box, crop.brain
    weights = partial_volume_weights(labels_box, params.partial_volume_sigma_mm)
    texture = smooth_random_field(rngs["fields"], labels_box.shape, params.texture_scale_mm)
    grid_half = (np.asarray(grid_shape, dtype=np.float32) - 1.0) / 2.0
    brain_idx = np.nonzero(brain)
    norm_coords = np.stack(
        [(brain_idx[k] + crop.lo[k] - grid_half[k]) / grid_half[k] for k in range(3)], axis=1
    ).astype(np.float32)
    noise_rng = rngs["noise"]
    images: dict[str, np.ndarray] = {}
    relative = np.zeros(crop.shape, dtype=np.float32)
    for mod in MODALITIES:
        levels = intensity["tissue_levels"].get(mod)
        level_tuple = None if levels is None else (levels["csf"], levels["gm"], levels["wm"])
        relative[brain] = normal_tissue_signal(
            tissue.t1_brain, tissue.memberships, tissue.means, level_tuple, params.tail_gain
        )
        relative[box] = blend_tumour_signal(
            relative[box],
            weights,
            intensity["tumour_levels"][mod],
            texture,
            intensity["texture_amplitude"],
            intensity["edema_blend"],
        )
        if mod == "t1c" and tumour.focus is not None:
            focus_signal = np.float32(params.focus_t1c_gain) * (
                1.0 + np.float32(params.focus_heterogeneity) * tumour.focus.texture
            )
            gain = np.maximum(1.0 + tumour.focus.weight * (focus_signal - 1.0), np.float32(0.2))
            relative[box] *= gain
        values = relative[brain] * polynomial_bias_field(
            norm_coords,
            np.asarray(intensity["bias_coefficients"][mod]),
            intensity["bias_amplitude"][mod],
        )
        values += noise_rng.standard_normal(values.size, dtype=np.float32) / np.float32(
            intensity["snr"][mod]
        )
        scale = np.float32(intensity["global_scale"][mod])
        values = np.maximum(values * scale, scale * np.float32(1e-3))
        volume = np.zeros(grid_shape, dtype=np.float32)
        volume[crop.region][brain] = values
        images[mod] = volume
    return images


def _case_truth(
    seed: int,
    case_id: str,
    params: PhantomParams,
    anatomy: Anatomy,
    drawn: dict[str, Any],
    placement: _TumourPlacement,
    crop: _WarpedCrop,
    tissue: _TissueModel,
    tumour: _TumourBox,
    segmentation: np.ndarray,
) -> dict[str, Any]:
    """The case's JSON-serialisable truth record: geometry, measured labels, drawn parameters."""
    affine = np.array(anatomy.affine, dtype=np.float64)
    extras: dict[str, Any] = {}
    if params.focus:
        extras["focus"] = None if tumour.focus is None else tumour.focus.truth
    if crop.structures:
        tumour_crop = segmentation[crop.region] > 0
        extras.update(_structure_truth(tumour_crop, crop.structures, anatomy.spacing_mm, affine))
    settings = dataclasses.asdict(params)
    if params.tumour_type is None:
        del settings["tumour_type"]  # default truth.json stays byte-identical
    else:
        extras["diagnosis"] = drawn["diagnosis"]
        extras["tumour_types_version"] = TUMOUR_TYPES_VERSION
    mass = drawn["mass_effect"]
    return {
        "case_id": case_id,
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
        "shape": list(anatomy.shape),
        "spacing_mm": list(anatomy.spacing_mm),
        "affine": affine.tolist(),
        **compute_truth(segmentation, affine),
        **extras,
        "params": {
            **drawn,
            "placement": placement.info,
            "mass_effect": {**mass, "edge_radius_mm": crop.edge_radius_mm},
            "tissue_means_t1": list(tissue.means),
            "settings": settings,
        },
    }


def _full_grid_anatomy(
    grid_shape: tuple[int, int, int], crop: _WarpedCrop, tissue: _TissueModel
) -> WarpedAnatomy:
    """The warped anatomy of the crop, put back on the full grid."""
    region = crop.region
    t1 = np.zeros(grid_shape, dtype=np.float32)
    t1[region] = crop.t1
    brain = np.zeros(grid_shape, dtype=bool)
    brain[region] = crop.brain
    ventricles = np.zeros(grid_shape, dtype=bool)
    ventricles[region] = crop.ventricles
    tissue_crop = np.zeros(crop.shape, dtype=np.uint8)
    tissue_crop[crop.brain] = (np.argmax(tissue.memberships, axis=1) + 1).astype(np.uint8)
    tissue_full = np.zeros(grid_shape, dtype=np.uint8)
    tissue_full[region] = tissue_crop
    structures: dict[str, np.ndarray] = {}
    for name, mask in crop.structures.items():
        structures[name] = np.zeros(grid_shape, dtype=bool)
        structures[name][region] = mask
    return WarpedAnatomy(
        t1=t1, brain=brain, ventricles=ventricles, tissue=tissue_full, structures=structures
    )


def generate_case_with_anatomy(
    seed: int,
    case_id: str,
    params: PhantomParams = PhantomParams(),
    anatomy: Anatomy | None = None,
    *,
    tumour_labels: np.ndarray | None = None,
) -> tuple[PhantomCase, WarpedAnatomy]:
    """Generate one case and return it with its case-space (warped) anatomy.

    Runs the five steps of the module docstring: :func:`sample_case_params`,
    :func:`_place_tumour`, :func:`_warp_anatomy` (and :func:`_tissue_model`),
    :func:`_render_tumour`, :func:`_synthesise_images`; each draws from its own random streams,
    so the steps' order keeps every draw as it was.

    Args:
        seed: non-negative case seed; the same seed gives bit-identical arrays.
        case_id: identifier made of letters, digits, ``.``, ``_`` and ``-``.
        params: generator knobs.
        anatomy: reference anatomy; default the cached SRI24 atlas.
        tumour_labels: uint8 labels on the anatomy grid that replace the drawn tumour (the
            shape is still drawn, so every other draw is unchanged); needs
            ``random_warp=False``, so that case space is atlas space. Used by
            :mod:`cerebrascan.phantoms.series` to render visits of one patient.

    Returns:
        ``(case, warped_anatomy)``.

    Raises:
        ValueError: for a bad seed or case id.
    """
    if not isinstance(case_id, str) or not _CASE_ID_PATTERN.match(case_id):
        raise ValueError(f"case_id must match {_CASE_ID_PATTERN.pattern}, got {case_id!r}")
    start = time.perf_counter()
    rngs = _rngs(seed)
    drawn = sample_case_params(seed, params)
    anatomy = load_anatomy() if anatomy is None else anatomy
    table = _placement_table(anatomy)
    shape = tumour_shape_from_params(drawn["tumour"])

    placement = _place_tumour(anatomy, table, shape, drawn, params, rngs)
    crop = _warp_anatomy(
        anatomy, table, placement, shape, drawn["mass_effect"], params.truth_structures
    )
    tissue = _tissue_model(crop)
    tumour = _render_tumour(
        shape, crop, tissue, placement, params, rngs, anatomy.affine, case_id, tumour_labels
    )
    images = _synthesise_images(
        anatomy.shape, crop, tissue, tumour, drawn["intensity"], params, rngs
    )

    seg_crop = np.zeros(crop.shape, dtype=np.uint8)
    seg_crop[tumour.box] = tumour.labels
    segmentation = np.zeros(anatomy.shape, dtype=np.uint8)
    segmentation[crop.region] = seg_crop
    truth = _case_truth(
        seed, case_id, params, anatomy, drawn, placement, crop, tissue, tumour, segmentation
    )
    logger.debug("generated %s (seed %d) in %.2f s", case_id, seed, time.perf_counter() - start)
    case = PhantomCase(
        case_id=case_id,
        images=images,
        segmentation=segmentation,
        affine=np.array(anatomy.affine, dtype=np.float64),
        truth=truth,
    )
    return case, _full_grid_anatomy(anatomy.shape, crop, tissue)


def generate_case(
    seed: int,
    case_id: str,
    params: PhantomParams = PhantomParams(),
    *,
    anatomy: Anatomy | None = None,
) -> PhantomCase:
    """Generate one synthetic case (see :func:`generate_case_with_anatomy`).

    Args:
        seed: non-negative case seed; the same seed gives bit-identical arrays.
        case_id: identifier, e.g. ``PHANTOM-00000-000``.
        params: generator knobs.
        anatomy: reference anatomy; default the cached SRI24 atlas.

    Returns:
        The case.
    """
    return generate_case_with_anatomy(seed, case_id, params, anatomy)[0]


def _given_tumour_box(
    tumour_labels: np.ndarray,
    params: PhantomParams,
    out_lo: np.ndarray,
    out_hi: np.ndarray,
    centre_local: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The crop-local box and labels of a caller-given tumour (``tumour_labels`` above).

    Raises:
        ValueError: with a random warp, or labels not uint8 in {0..3} on the crop's grid.
    """
    if params.random_warp:
        raise ValueError("tumour_labels needs PhantomParams(random_warp=False)")
    labels = np.asarray(tumour_labels)
    if labels.ndim != 3 or labels.dtype != np.uint8 or int(labels.max(initial=0)) > 3:
        raise ValueError(
            f"tumour_labels must be uint8 (x, y, z) labels in 0..3, got {labels.dtype} "
            f"{labels.shape}"
        )
    crop = tuple(slice(int(a), int(b)) for a, b in zip(out_lo, out_hi, strict=True))
    local = labels[crop]
    if local.shape != tuple(int(b - a) for a, b in zip(out_lo, out_hi, strict=True)):
        raise ValueError(f"tumour_labels of shape {labels.shape} do not cover the brain box")
    if int(np.count_nonzero(labels)) != int(np.count_nonzero(local)):
        raise ValueError("tumour_labels reach outside the brain box")
    found = np.nonzero(local)
    margin = 3  # voxels of partial-volume blending around the labels
    if found[0].size:
        lo = [max(int(f.min()) - margin, 0) for f in found]
        hi = [min(int(f.max()) + margin + 1, n) for f, n in zip(found, local.shape, strict=True)]
    else:  # no tumour: a small box of normal tissue around the drawn centre
        lo = [max(int(c) - margin, 0) for c in centre_local]
        hi = [min(int(c) + margin + 1, n) for c, n in zip(centre_local, local.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return box, np.ascontiguousarray(local[box])
