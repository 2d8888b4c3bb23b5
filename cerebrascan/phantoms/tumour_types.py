"""Tumour types of the phantoms: diagnosis labels and their imaging phenotypes (pure maths).

Opt-in (``PhantomParams.tumour_type``); the default phantoms never call this module. For a
typed case, :func:`draw_diagnosis` draws the labels (age, WHO grade, IDH and MGMT status for
gliomas) and :func:`apply_tumour_type` rewrites the tumour geometry and intensity knobs drawn by
:func:`cerebrascan.phantoms.generator.sample_case_params` to the type's phenotype;
:func:`placement_pool` says where the centre may lie. All draws come from the case's own
``tumour_type`` random stream, so every other draw of the case stays as it is.

The phenotypes are coarse caricatures of the literature, made to overlap, with their sources:

* **Glioma** (intra-axial, supratentorial white matter; WHO CNS5 2021, Louis et al., Neuro-Oncol
  2021). IDH-wild-type glioblastoma: older patients (median ~62 y), ring enhancement around
  necrosis, wide vasogenic/infiltrative edema (Ellingson, Neuro-Oncol 2013). IDH-mutant: younger
  (~38 y), frontal/insular predilection (Lai et al., JCO 2011; Ellingson et al., AJNR 2013),
  little or no enhancement or necrosis, sharper margins, less edema (Carrillo et al., AJNR 2012)
  and the T2-FLAIR mismatch sign (T2 hyperintense, FLAIR relatively suppressed core with a bright
  rim; Patel et al., Clin Cancer Res 2017; Jain et al., Neuro-Oncol 2020: ~100 % specific, ~30-50 %
  sensitive). MGMT promoter methylation has only weak, inconsistent imaging correlates (Drabycz et
  al., NeuroImage 2010; Han et al., JCO CCI 2018): here a slightly smaller edema only; MGMT is
  methylated more often in IDH-mutant tumours (Hegi et al.; Leu et al., Neuro-Oncol 2013).
* **Meningioma** (extra-axial, dural based, broad base on the brain surface, convexity /
  parafalcine, sometimes skull base or cerebellopontine angle): avid homogeneous enhancement,
  T2 iso- to mildly hyperintense, variable peritumoural edema; WHO grade 1 ~80 %, 2 ~17 %,
  3 ~2 % (Huang et al., Neuro-Oncol 2019; Osborn's Brain, 2nd ed., ch. 22).
* **Pituitary adenoma** (sellar/suprasellar, midline, inferior): solid enhancing, cystic or
  haemorrhagic change in macroadenomas, no edema (Chaudhary & Bano, Indian J Endocrinol Metab
  2011).
* **Vestibular schwannoma** (cerebellopontine angle, lateral to the pons at the surface):
  enhancing, T2 hyperintense, cystic change in larger ones, little edema; WHO grade 1 (Lin &
  Crane, AJNR 2017 review; Osborn's Brain ch. 23).
* **Medulloblastoma** (posterior fossa, midline vermis / fourth-ventricle roof, mostly
  children): hypercellular, T2 iso- to hypointense relative to other tumours, heterogeneous
  enhancement, some cysts, mild edema; WHO grade 4 (Koeller & Rushing, RadioGraphics 2003).
* **Ependymoma** (floor of the fourth ventricle in children, also supratentorial
  parenchymal/periventricular in adults): heterogeneous enhancement, cysts, calcification,
  T2 hyperintense; WHO grade 2-3 (Yuh et al., AJNR 2009).

One further type, ``central_neurocytoma`` (lateral ventricle, intraventricular, "bubbly" cystic),
is in :data:`SHIFTED_TUMOUR_TYPES`: it is never in a training cohort and serves only to test
out-of-distribution detection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The six tumour types of the classification cohorts, in label order.
TUMOUR_TYPES: tuple[str, ...] = (
    "glioma",
    "meningioma",
    "pituitary_adenoma",
    "schwannoma",
    "medulloblastoma",
    "ependymoma",
)
#: Types the generator can render that no training cohort holds (OOD tests).
SHIFTED_TUMOUR_TYPES: tuple[str, ...] = ("central_neurocytoma",)
ALL_TUMOUR_TYPES: tuple[str, ...] = TUMOUR_TYPES + SHIFTED_TUMOUR_TYPES
TUMOUR_TYPES_VERSION = "1.0.0"


def check_type_weights(type_probs: Mapping[str, float], known: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``type_probs`` gives non-negative weights, not all zero,
    to names in ``known`` only (the message names the unknown ones)."""
    unknown = sorted(set(type_probs) - set(known))
    weights = list(type_probs.values())
    if unknown or not weights or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"type_probs must give non-negative weights (not all zero) of types in "
            f"{tuple(known)}, got {dict(type_probs)} (unknown: {unknown})"
        )


#: key of ``type_probs`` for the generic glioma-like phantom (``PhantomParams.tumour_type=None``)
GENERIC_TYPE = "generic"


def check_type_probs(type_probs: Mapping[str, float]) -> None:
    """Raise ``ValueError`` unless ``type_probs`` weighs known tumour types.

    Args:
        type_probs: weight of each type: ``"generic"`` or a name of :data:`ALL_TUMOUR_TYPES`.
    """
    check_type_weights(type_probs, (GENERIC_TYPE, *ALL_TUMOUR_TYPES))


def case_tumour_type(seed: int, index: int, type_probs: Mapping[str, float]) -> str:
    """The tumour type of case ``index`` of a typed cohort, independent of the cohort size.

    Drawn from a stream of its own, so the case's image streams
    (:func:`cerebrascan.phantoms.generator.case_seed`) are the same as in an untyped cohort of
    the same seed.

    Args:
        seed: the cohort seed.
        index: the case index.
        type_probs: weight of each type (:func:`check_type_probs`).

    Returns:
        ``"generic"`` or a tumour type.

    Raises:
        ValueError: bad ``type_probs``.
    """
    check_type_probs(type_probs)
    names = sorted(type_probs)
    weights = np.asarray([type_probs[name] for name in names], dtype=float)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 104729)))
    return str(rng.choice(names, p=weights / weights.sum()))


#: Midline of the SRI24 grid (voxel index along x; RAS x = -i, midline at x = -119.5 mm).
_MIDLINE_VOXEL_X = 119.5


@dataclass(frozen=True)
class _TypeSpec:
    """Phenotype of one tumour type (ranges are uniform unless said otherwise)."""

    phenotypes: dict[str, float]  # probabilities of the generator phenotypes
    wt_volume_ml: tuple[float, float]  # log-uniform
    minimal_edema_prob: float
    edema_margin_mm: tuple[float, float]
    core_fraction: tuple[float, float]
    level_factors: dict[str, dict[str, float]]  # modality -> label -> multiplier
    grades: dict[int, float]
    age: tuple[tuple[float, float, float], ...]  # mixture of (weight, mean, sd)
    age_bounds: tuple[float, float]


_NO_CHANGE: dict[str, dict[str, float]] = {}

TYPE_SPECS: dict[str, _TypeSpec] = {
    "meningioma": _TypeSpec(
        phenotypes={"solid": 0.8, "patchy": 0.15, "necrotic": 0.05},
        wt_volume_ml=(3.0, 70.0),
        minimal_edema_prob=0.5,
        edema_margin_mm=(2.0, 14.0),
        core_fraction=(0.3, 0.9),
        level_factors={
            "t1c": {"ET": 1.25},
            "t2w": {"ET": 0.8, "NETC": 0.9},
            "t2f": {"ET": 0.85},
            "t1n": {"ET": 1.1},
        },
        grades={1: 0.80, 2: 0.17, 3: 0.03},
        age=((1.0, 58.0, 13.0),),
        age_bounds=(20.0, 90.0),
    ),
    "pituitary_adenoma": _TypeSpec(
        phenotypes={"solid": 0.65, "patchy": 0.35},
        wt_volume_ml=(1.0, 18.0),
        minimal_edema_prob=1.0,
        edema_margin_mm=(0.0, 1.0),
        core_fraction=(0.9, 1.0),
        level_factors={
            "t1c": {"ET": 0.95},
            "t2w": {"ET": 0.85, "NETC": 1.15},
            "t2f": {"ET": 0.9, "NETC": 0.7},
            "t1n": {"NETC": 1.6},  # haemorrhagic/proteinaceous cyst: T1 bright
        },
        grades={1: 1.0},
        age=((1.0, 48.0, 14.0),),
        age_bounds=(15.0, 85.0),
    ),
    "schwannoma": _TypeSpec(
        phenotypes={"solid": 0.5, "patchy": 0.35, "necrotic": 0.15},
        wt_volume_ml=(1.0, 25.0),
        minimal_edema_prob=0.8,
        edema_margin_mm=(1.0, 5.0),
        core_fraction=(0.6, 1.0),
        level_factors={
            "t1c": {"ET": 1.1},
            "t2w": {"ET": 1.3, "NETC": 1.2},
            "t2f": {"ET": 1.05, "NETC": 0.55},  # cysts: fluid, FLAIR dark
        },
        grades={1: 1.0},
        age=((1.0, 50.0, 13.0),),
        age_bounds=(15.0, 85.0),
    ),
    "medulloblastoma": _TypeSpec(
        phenotypes={"patchy": 0.5, "solid": 0.35, "necrotic": 0.15},
        wt_volume_ml=(8.0, 60.0),
        minimal_edema_prob=0.25,
        edema_margin_mm=(2.0, 9.0),
        core_fraction=(0.4, 0.9),
        level_factors={
            "t2w": {"ET": 0.7, "NETC": 0.8},  # hypercellular: T2 iso/hypo
            "t2f": {"ET": 0.85},
            "t1c": {"ET": 0.85},
            "t1n": {"ET": 0.85},
        },
        grades={4: 1.0},
        age=((0.8, 8.0, 4.0), (0.2, 30.0, 8.0)),
        age_bounds=(1.0, 60.0),
    ),
    "ependymoma": _TypeSpec(
        phenotypes={"patchy": 0.6, "necrotic": 0.25, "solid": 0.15},
        wt_volume_ml=(6.0, 60.0),
        minimal_edema_prob=0.35,
        edema_margin_mm=(2.0, 10.0),
        core_fraction=(0.4, 0.9),
        level_factors={
            "t2w": {"ET": 1.2, "NETC": 1.15},
            "t2f": {"NETC": 0.6},  # cysts
            "t1c": {"ET": 0.9},
        },
        grades={2: 0.6, 3: 0.4},
        age=((0.55, 6.0, 4.0), (0.45, 42.0, 12.0)),
        age_bounds=(1.0, 80.0),
    ),
    "central_neurocytoma": _TypeSpec(
        phenotypes={"patchy": 0.7, "non_enhancing": 0.3},
        wt_volume_ml=(4.0, 40.0),
        minimal_edema_prob=1.0,
        edema_margin_mm=(0.0, 1.0),
        core_fraction=(0.9, 1.0),
        level_factors={
            "t2w": {"NETC": 1.3, "ET": 1.2},
            "t2f": {"NETC": 0.45},  # "bubbly" cysts
            "t1n": {"NETC": 0.8},
        },
        grades={2: 1.0},
        age=((1.0, 29.0, 8.0),),
        age_bounds=(15.0, 60.0),
    ),
}

# Gliomas are drawn by IDH status and grade (see draw_diagnosis).
_GLIOMA_IDH_MUTANT_PROB = 0.45
_GLIOMA_MUT_GRADES = {2: 0.55, 3: 0.30, 4: 0.15}
_GLIOMA_MUT_PHENOTYPES = {
    2: {"non_enhancing": 0.8, "patchy": 0.2},
    3: {"non_enhancing": 0.5, "patchy": 0.4, "necrotic": 0.1},
    4: {"necrotic": 0.5, "patchy": 0.5},
}
# ~10 % of IDH-wild-type gliomas do not enhance (molecular glioblastoma): overlap with IDH-mut.
_GLIOMA_WT_PHENOTYPES = {"necrotic": 0.72, "patchy": 0.15, "non_enhancing": 0.10, "solid": 0.03}
_MISMATCH_PROB = 0.45  # of non-enhancing / patchy IDH-mutant gliomas (Jain et al. 2020)
_MGMT_METHYLATED_PROB = {True: 0.8, False: 0.45}  # by IDH-mutant
_MGMT_EDEMA_FACTOR = 0.85  # the weak correlate


def _choice(rng: np.random.Generator, probs: dict[Any, float]) -> Any:
    keys = list(probs)
    weights = np.asarray([probs[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def _age(
    rng: np.random.Generator,
    mixture: tuple[tuple[float, float, float], ...],
    bounds: tuple[float, float],
) -> float:
    component = _choice(rng, {i: w for i, (w, _, _) in enumerate(mixture)})
    _, mean, sd = mixture[component]
    return round(float(np.clip(rng.normal(mean, sd), *bounds)), 1)


def draw_diagnosis(tumour_type: str, rng: np.random.Generator) -> dict[str, Any]:
    """Draw the diagnosis labels of a case of ``tumour_type``.

    Args:
        tumour_type: one of :data:`ALL_TUMOUR_TYPES`.
        rng: the case's ``tumour_type`` stream (consumed).

    Returns:
        ``{"tumour_type", "who_grade", "high_grade", "idh_mutant", "mgmt_methylated",
        "age_years", "t2_flair_mismatch", "phenotype"}``; IDH/MGMT are None for non-gliomas.

    Raises:
        ValueError: for an unknown tumour type.
    """
    if tumour_type not in ALL_TUMOUR_TYPES:
        raise ValueError(f"tumour_type must be one of {ALL_TUMOUR_TYPES}, got {tumour_type!r}")
    idh: bool | None = None
    mgmt: bool | None = None
    mismatch = False
    if tumour_type == "glioma":
        idh = bool(rng.uniform() < _GLIOMA_IDH_MUTANT_PROB)
        mgmt = bool(rng.uniform() < _MGMT_METHYLATED_PROB[idh])
        if idh:
            grade = int(_choice(rng, _GLIOMA_MUT_GRADES))
            phenotype = str(_choice(rng, _GLIOMA_MUT_PHENOTYPES[grade]))
            age = _age(rng, ((1.0, 38.0, 11.0),), (18.0, 75.0))
            mismatch = phenotype != "necrotic" and bool(rng.uniform() < _MISMATCH_PROB)
        else:
            grade = 4
            phenotype = str(_choice(rng, _GLIOMA_WT_PHENOTYPES))
            age = _age(rng, ((1.0, 62.0, 10.0),), (25.0, 90.0))
    else:
        spec = TYPE_SPECS[tumour_type]
        grade = int(_choice(rng, spec.grades))
        phenotype = str(_choice(rng, spec.phenotypes))
        age = _age(rng, spec.age, spec.age_bounds)
    return {
        "tumour_type": tumour_type,
        "who_grade": grade,
        "high_grade": grade >= 3,
        "idh_mutant": idh,
        "mgmt_methylated": mgmt,
        "age_years": age,
        "t2_flair_mismatch": mismatch,
        "phenotype": phenotype,
    }


def _geometry(
    tumour: dict[str, Any],
    rng: np.random.Generator,
    wt_volume_ml: tuple[float, float],
    minimal_edema_prob: float,
    edema_margin_mm: tuple[float, float],
    core_fraction: tuple[float, float],
    min_core_radius_mm: float,
) -> dict[str, Any]:
    """Redraw size, edema and core fraction; keep shape, orientation and noise draws."""
    wt_ml = float(np.exp(rng.uniform(np.log(wt_volume_ml[0]), np.log(wt_volume_ml[1]))))
    wt_radius = (3.0 * wt_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    minimal = bool(rng.uniform() < minimal_edema_prob)
    fraction = float(rng.uniform(*core_fraction))
    if minimal:
        margin = float(rng.uniform(0.0, 2.0))
    else:
        margin = float(np.clip(wt_radius * (1.0 - fraction ** (1.0 / 3.0)), *edema_margin_mm))
    core_radius = max(wt_radius - margin, min_core_radius_mm)
    return {
        **tumour,
        "wt_target_ml": wt_ml,
        "minimal_edema": minimal,
        "core_fraction": fraction,
        "core_radius_mm": core_radius,
        "boundary_noise_mm": min(tumour["boundary_noise_mm"], 0.25 * core_radius),
        "edema_margin_mm": margin,
        "edema_noise_mm": min(tumour["edema_noise_mm"], 0.4 * margin),
    }


def apply_tumour_type(
    drawn: dict[str, Any],
    diagnosis: dict[str, Any],
    rng: np.random.Generator,
    min_core_radius_mm: float,
) -> dict[str, Any]:
    """Rewrite the tumour and intensity draws of a case to its type's phenotype.

    Args:
        drawn: output of ``sample_case_params`` (not modified).
        diagnosis: output of :func:`draw_diagnosis`.
        rng: the case's ``tumour_type`` stream, after :func:`draw_diagnosis` (consumed).
        min_core_radius_mm: the generator's smallest core radius.

    Returns:
        A new dict like ``drawn`` with ``tumour`` and ``intensity["tumour_levels"]`` replaced.
    """
    tumour_type = diagnosis["tumour_type"]
    tumour = dict(drawn["tumour"])
    factors: dict[str, dict[str, float]]
    if tumour_type == "glioma":
        if diagnosis["idh_mutant"]:
            tumour = _geometry(
                tumour, rng, (10.0, 120.0), 0.35, (1.0, 8.0), (0.5, 0.95), min_core_radius_mm
            )
            factors = {"t1c": {"ET": 0.85}}
            if diagnosis["t2_flair_mismatch"]:
                # T2 bright core whose FLAIR signal is suppressed, bright FLAIR rim (SNFH)
                factors = {"t2w": {"NETC": 1.15}, "t2f": {"NETC": 0.55}, "t1c": {"ET": 0.85}}
        else:
            tumour = _geometry(
                tumour, rng, (25.0, 180.0), 0.05, (6.0, 25.0), (0.12, 0.55), min_core_radius_mm
            )
            factors = {"t1c": {"ET": 1.1}}
        if diagnosis["mgmt_methylated"]:
            tumour["edema_margin_mm"] *= _MGMT_EDEMA_FACTOR
    else:
        spec = TYPE_SPECS[tumour_type]
        tumour = _geometry(
            tumour,
            rng,
            spec.wt_volume_ml,
            spec.minimal_edema_prob,
            spec.edema_margin_mm,
            spec.core_fraction,
            min_core_radius_mm,
        )
        factors = spec.level_factors
    tumour["phenotype"] = diagnosis["phenotype"]
    tumour["supratentorial"] = tumour_type in ("glioma", "meningioma", "pituitary_adenoma")
    levels = {
        mod: {
            name: float(value * factors.get(mod, {}).get(name, 1.0))
            for name, value in by_label.items()
        }
        for mod, by_label in drawn["intensity"]["tumour_levels"].items()
    }
    return {
        **drawn,
        "tumour": tumour,
        "intensity": {**drawn["intensity"], "tumour_levels": levels},
    }


def _site(tumour_type: str, diagnosis: dict[str, Any], rng: np.random.Generator) -> str:
    """Where the tumour sits, with the overlaps between types (rng consumed)."""
    sites: dict[str, float]
    if tumour_type == "glioma":
        sites = (
            {"frontal_insular": 0.65, "supratentorial_parenchyma": 0.32, "brainstem": 0.03}
            if diagnosis["idh_mutant"]
            else {"supratentorial_parenchyma": 0.9, "frontal_insular": 0.05, "brainstem": 0.05}
        )
    elif tumour_type == "meningioma":
        sites = {"convexity": 0.6, "parafalcine": 0.2, "sellar": 0.08, "cerebellopontine": 0.12}
    elif tumour_type == "pituitary_adenoma":
        sites = {"sellar": 1.0}
    elif tumour_type == "schwannoma":
        sites = {"cerebellopontine": 1.0}
    elif tumour_type == "medulloblastoma":
        sites = {"vermis": 0.85, "cerebellar_hemisphere": 0.15}
    elif tumour_type == "ependymoma":
        sites = {"fourth_ventricle": 0.7, "periventricular": 0.3}
    else:  # central_neurocytoma
        sites = {"lateral_ventricle": 1.0}
    return str(_choice(rng, sites))


def placement_pool(
    tumour_type: str,
    diagnosis: dict[str, Any],
    coords: np.ndarray,
    edge_mm: np.ndarray,
    ventricle_mm: np.ndarray,
    supratentorial: np.ndarray,
    structures: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[str, np.ndarray, bool]:
    """Candidate tumour centres (atlas brain voxels) of a typed case.

    Args:
        tumour_type: the case's type.
        diagnosis: output of :func:`draw_diagnosis`.
        coords: ``(N, 3)`` atlas voxel indices of the brain (SRI24 grid: x = -i, y = j, z = k).
        edge_mm: distance of each voxel to the brain edge.
        ventricle_mm: distance to the ventricle region.
        supratentorial: bool per voxel.
        structures: bool per voxel of SRI24 structures (``brainstem``, ``frontal_lobe``,
            ``insula``); absent ones count as empty.
        rng: the case's ``tumour_type`` stream (consumed).

    Returns:
        ``(site, pool, intra_axial)``: the site name, a bool mask over ``coords`` and whether the
        centre needs the usual clearance from the brain edge (False: extra-axial or
        surface-based, the centre lies near the edge and the core is clipped by the brain).
    """
    site = _site(tumour_type, diagnosis, rng)
    lateral = np.abs(coords[:, 0].astype(np.float64) - _MIDLINE_VOXEL_X)
    j = coords[:, 1].astype(np.float64)
    k = coords[:, 2].astype(np.float64)
    n = coords.shape[0]
    empty = np.zeros(n, dtype=bool)
    stem = structures.get("brainstem", empty)
    infra = ~supratentorial
    stem_j = j[stem] if stem.any() else np.array([84.0, 124.0])
    stem_k = k[stem] if stem.any() else np.array([6.0, 71.0])
    stem_back, stem_front = float(np.percentile(stem_j, 2)), float(np.percentile(stem_j, 98))
    pons = float(np.percentile(stem_k, 55))
    surface = edge_mm <= 3.0
    if site == "frontal_insular":
        pool = structures.get("frontal_lobe", empty) | structures.get("insula", empty)
        return site, pool & supratentorial & (ventricle_mm > 0), True
    if site == "supratentorial_parenchyma":
        return site, supratentorial & (ventricle_mm > 0), True
    if site == "brainstem":
        return site, stem, True
    if site == "convexity":
        return site, supratentorial & surface & (lateral > 25.0) & (k > 60.0), False
    if site == "parafalcine":
        return site, supratentorial & surface & (lateral < 8.0) & (k > 70.0), False
    if site == "sellar":
        low = float(np.percentile(k[supratentorial], 1))
        pool = (
            supratentorial
            & (edge_mm <= 4.0)
            & (lateral < 7.0)
            & (j > stem_front - 4.0)
            & (j < stem_front + 22.0)
            & (k < low + 22.0)
        )
        return site, pool, False
    if site == "cerebellopontine":
        pool = (
            infra
            & surface
            & (lateral > 14.0)
            & (lateral < 36.0)
            & (j > stem_back)
            & (j < stem_front)
            & (np.abs(k - pons) < 12.0)
        )
        return site, pool, False
    if site == "vermis":
        pool = infra & ~stem & (lateral < 8.0) & (j < stem_back + 4.0) & (j > stem_back - 22.0)
        return site, pool & (k < pons + 12.0), False
    if site == "cerebellar_hemisphere":
        return site, infra & ~stem & (lateral > 15.0) & (j < stem_back), True
    if site == "fourth_ventricle":
        pool = (
            infra
            & ~stem
            & (lateral < 5.0)
            & (j < stem_back + 6.0)
            & (j > stem_back - 10.0)
            & (np.abs(k - pons) < 14.0)
        )
        return site, pool, False
    if site == "periventricular":
        return site, supratentorial & (ventricle_mm > 0) & (ventricle_mm < 8.0), False
    # lateral_ventricle
    return site, supratentorial & (ventricle_mm == 0) & (lateral > 3.0), False
