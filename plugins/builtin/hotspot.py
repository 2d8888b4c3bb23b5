"""Biopsy-site recommendation: where the tumour looks most aggressive (research use only).

A heatmap over the tumour core (TC = labels 1, 3; the whole tumour when there is no core)
combines three cues, each scaled to [0, 1] within that region:

* ``P``: the model's ET probability (channel 3 of ``context.probabilities``);
* ``E``: t1c enhancement, ``R = t1c / ref`` with ``ref`` the median t1c of normal-appearing
  white matter (non-tumour brain voxels in the brightest 30 % of t1n, every 2nd voxel per
  axis); ``E = clip((R - 1) / (q99(R) - 1), 0, 1)``;
* ``H``: local heterogeneity, the standard deviation of ``R`` in a ``window_mm`` cube,
  divided by its 99th percentile in the region and clipped to 1.

``heat = (w_P P + w_E E + w_H H) / (w_P + w_E + w_H)``, Gaussian-smoothed (``smoothing_mm``)
and zero outside the region. Targets are local maxima of the heatmap taken greedily in
decreasing order, each at least ``min_separation_mm`` from the previous ones (distances in mm
through the affine), inside the region and at least ``exclusion_margin_mm`` from the excluded
SRI24 structures (brainstem, ventricles and internal capsule by default). The structures come
from the same cached atlas mapping as the ``nogo`` analyzer, so a registration needed by both
runs once; ``exclude_structures: []`` skips the atlas entirely.

Artefact ``hotspot_heatmap``: the float32 heatmap on the input grid.
"""

from __future__ import annotations

import logging
import math
import time
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import ndimage

from cerebrascan.atlas.files import SRI24_STRUCTURES
from cerebrascan.imaging.geometry import spacing_from_affine
from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.builtin._support import (
    bounding_box,
    channel,
    known_structure_names,
    segmentation_of,
)
from plugins.builtin.nogo import AtlasOptions, map_atlas
from plugins.hookspecs import hookimpl

logger = logging.getLogger(__name__)

DEFAULT_EXCLUDED: tuple[str, ...] = ("brainstem", "ventricles", "internal_capsule")
_NAWM_PERCENTILE = 70.0
_STRIDE = 2


class HotspotOptions(AtlasOptions):
    """Per-request options of the hotspot analyzer."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=3, ge=1, le=20, description="Number of targets to propose.")
    min_separation_mm: float = Field(
        default=10.0, ge=0.0, description="Minimum distance between two targets (mm)."
    )
    exclude_structures: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDED),
        description=f"SRI24 structures to keep away from, a subset of {list(SRI24_STRUCTURES)}.",
    )
    exclusion_margin_mm: float = Field(
        default=5.0, ge=0.0, description="Targets keep at least this distance (mm) from them."
    )
    weight_et_probability: float = Field(default=1.0, ge=0.0, description="Weight of P.")
    weight_enhancement: float = Field(default=1.0, ge=0.0, description="Weight of E.")
    weight_heterogeneity: float = Field(default=1.0, ge=0.0, description="Weight of H.")
    window_mm: float = Field(
        default=3.0, gt=0.0, le=15.0, description="Edge of the local-std window (mm)."
    )
    smoothing_mm: float = Field(
        default=1.5, ge=0.0, le=10.0, description="Gaussian sigma applied to the heatmap (mm)."
    )

    @field_validator("exclude_structures")
    @classmethod
    def _known_structures(cls, value: list[str]) -> list[str]:
        return known_structure_names("exclude_structures", value, allow_empty=True)

    @model_validator(mode="after")
    def _some_weight(self) -> HotspotOptions:
        weights = (self.weight_et_probability, self.weight_enhancement, self.weight_heterogeneity)
        if sum(weights) <= 0:
            raise ValueError(f"at least one of the three weights must be > 0, got {weights}")
        return self


class BiopsyTarget(BaseModel):
    """One proposed biopsy target."""

    rank: int = Field(description="1 = highest heatmap score.")
    voxel: list[int] = Field(description="Voxel index (x, y, z) on the input grid.")
    ras_mm: list[float] = Field(description="Scanner RAS coordinates (mm) through the affine.")
    score: float = Field(description="Heatmap value at the target, in [0, 1].")
    et_probability: float = Field(description="Model ET probability at the target.")
    enhancement_ratio: float = Field(description="t1c / normal-appearing white matter t1c.")
    label: int = Field(description="Segmentation label at the target.")
    nearest_excluded_structure: str | None = Field(
        description="Closest excluded structure (null when none is excluded)."
    )
    nearest_excluded_mm: float | None = Field(
        description="Distance to that structure (mm, between voxel centres)."
    )


class HotspotResult(BaseModel):
    """Ranked biopsy targets and how they were found."""

    targets: list[BiopsyTarget] = Field(description="Up to k targets, best first.")
    region: Literal["TC", "WT", "none"] = Field(
        description="Region searched: tumour core, whole tumour (no core) or none (no tumour)."
    )
    k: int = Field(description="Number of targets requested.")
    min_separation_mm: float = Field(description="Minimum distance between targets (mm).")
    excluded_structures: list[str] = Field(description="Structures kept away from.")
    exclusion_margin_mm: float = Field(description="Distance kept from them (mm).")
    excluded_fraction: float = Field(
        description="Fraction of the region's voxels too close to an excluded structure."
    )
    reference_t1c: float | None = Field(
        description="Median t1c of normal-appearing white matter (enhancement reference)."
    )
    atlas_registered: bool | None = Field(
        description="Whether the atlas masks came from a registration (null: atlas not used)."
    )
    heatmap: str | None = Field(description="URL of the hotspot_heatmap artefact.")
    notes: list[str] = Field(description="Why fewer than k targets, and other caveats.")


def normal_white_matter_reference(
    t1c: npt.NDArray[np.float32], t1n: npt.NDArray[np.float32], segmentation: npt.NDArray[np.uint8]
) -> float:
    """Median t1c of normal-appearing white matter (see the module docstring).

    Raises:
        ValueError: when the brain has too few non-tumour voxels or t1c is not positive there.
    """
    step = slice(None, None, _STRIDE)
    c = t1c[step, step, step]
    n = t1n[step, step, step]
    brain = (c > 0) & (n > 0) & (segmentation[step, step, step] == 0)
    if np.count_nonzero(brain) < 100:
        raise ValueError(
            f"only {int(np.count_nonzero(brain))} non-tumour brain voxels (t1c > 0 and t1n > 0, "
            "every 2nd voxel); cannot estimate the normal t1c level"
        )
    bright = brain & (n >= np.percentile(n[brain], _NAWM_PERCENTILE))
    reference = float(np.median(c[bright] if np.count_nonzero(bright) >= 50 else c[brain]))
    if not reference > 0:
        raise ValueError(f"normal-appearing white matter t1c median is {reference}; expected > 0")
    return reference


def _robust_unit(values: npt.NDArray[np.float32], region: npt.NDArray[np.bool_]) -> float:
    """99th percentile of ``values`` inside ``region`` (0 when empty)."""
    inside = values[region]
    return float(np.percentile(inside, 99.0)) if inside.size else 0.0


def heatmap(
    t1c: npt.NDArray[np.float32],
    et_probability: npt.NDArray[np.float32],
    region: npt.NDArray[np.bool_],
    reference: float,
    spacing_mm: tuple[float, float, float],
    options: HotspotOptions,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Heatmap and enhancement ratio on one box (pure; see the module docstring).

    Returns:
        ``(heat, ratio)``, float32 arrays of the box shape; ``heat`` is 0 outside ``region``.
    """
    ratio = (t1c / np.float32(reference)).astype(np.float32)
    q_ratio = _robust_unit(ratio, region)
    if q_ratio > 1.0:
        enhancement = np.clip((ratio - 1.0) / np.float32(q_ratio - 1.0), 0.0, 1.0)
    else:
        enhancement = np.zeros_like(ratio)
    size = [max(1, round(options.window_mm / s)) | 1 for s in spacing_mm]
    mean = ndimage.uniform_filter(ratio, size=size, mode="nearest")
    mean_sq = ndimage.uniform_filter(ratio * ratio, size=size, mode="nearest")
    local_std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    q_std = _robust_unit(local_std, region)
    heterogeneity = (
        np.clip(local_std / np.float32(q_std), 0.0, 1.0) if q_std > 0 else 0.0 * local_std
    )
    weights = (
        options.weight_et_probability,
        options.weight_enhancement,
        options.weight_heterogeneity,
    )
    heat = (
        np.float32(weights[0]) * np.clip(et_probability, 0.0, 1.0)
        + np.float32(weights[1]) * enhancement
        + np.float32(weights[2]) * heterogeneity
    ) / np.float32(sum(weights))
    heat = np.where(region, heat, 0.0).astype(np.float32)
    if options.smoothing_mm > 0:
        sigma = [options.smoothing_mm / s for s in spacing_mm]
        heat = ndimage.gaussian_filter(heat, sigma=sigma, mode="constant")
        heat = np.where(region, heat, 0.0).astype(np.float32)
    return heat, ratio


def pick_targets(
    heat: npt.NDArray[np.float32],
    allowed: npt.NDArray[np.bool_],
    linear: npt.NDArray[np.float64],
    k: int,
    min_separation_mm: float,
) -> list[tuple[int, int, int]]:
    """Greedy non-maximum suppression over the local maxima of ``heat`` within ``allowed``.

    Args:
        heat: heatmap of a box.
        allowed: where targets may lie.
        linear: 3x3 voxel-to-mm matrix (the affine's linear part).
        k: number of targets.
        min_separation_mm: minimum distance between targets.

    Returns:
        Up to ``k`` voxel indices of the box, best first.
    """
    masked = np.where(allowed, heat, -np.inf).astype(np.float32)
    peaks = allowed & (masked == ndimage.maximum_filter(masked, size=3, mode="nearest"))
    peaks &= heat > 0
    coords = np.argwhere(peaks)
    if coords.size == 0:
        return []
    order = np.argsort(-heat[peaks], kind="stable")
    coords = coords[order]
    mm = coords.astype(np.float64) @ np.asarray(linear, dtype=np.float64).T
    chosen: list[int] = []
    for index in range(len(coords)):
        if all(np.linalg.norm(mm[index] - mm[j]) >= min_separation_mm for j in chosen):
            chosen.append(index)
            if len(chosen) == k:
                break
    return [(int(coords[i][0]), int(coords[i][1]), int(coords[i][2])) for i in chosen]


class HotspotAnalyzer(Analyzer):
    """Biopsy-site recommendation from ET probability, enhancement and heterogeneity."""

    name: ClassVar[str] = "hotspot"
    version: ClassVar[str] = "1.0.0"
    result_model: ClassVar[type[BaseModel]] = HotspotResult
    options_model: ClassVar[type[BaseModel] | None] = HotspotOptions
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.IMAGES, Need.SEGMENTATION, Need.PROBABILITIES}
    )
    depends_on: ClassVar[tuple[str, ...]] = ()
    timeout_s: ClassVar[float] = 120.0

    def analyze(self, context: AnalysisContext) -> HotspotResult:
        """Heatmap and up to ``k`` targets; writes ``hotspot_heatmap``.

        Raises:
            ValueError: for invalid options, missing inputs or mismatched grids.
        """
        started = time.perf_counter()
        options = context.options_as(HotspotOptions)
        t1c = channel(context, "t1c")
        t1n = channel(context, "t1n")
        segmentation = segmentation_of(context, t1c.shape)
        probabilities = context.probabilities
        if probabilities is None or probabilities.shape != (4, *t1c.shape):
            shape = None if probabilities is None else probabilities.shape
            raise ValueError(f"probabilities must have shape {(4, *t1c.shape)}, got {shape}")
        affine = np.asarray(context.affine, dtype=np.float64)
        spacing_mm = spacing_from_affine(affine)

        core = (segmentation == 1) | (segmentation == 3)
        region_name: Literal["TC", "WT", "none"] = "TC"
        if not core.any():
            core = segmentation > 0
            region_name = "WT" if core.any() else "none"
        full_heat = np.zeros(t1c.shape, dtype=np.float32)
        notes: list[str] = []
        if region_name == "none":
            url = self._write(context, full_heat)
            notes.append("No tumour in the segmentation: no targets.")
            return self._result(options, [], "none", 0.0, None, None, url, notes)
        if region_name == "WT":
            notes.append("No tumour core (labels 1, 3): searched the whole tumour.")

        reference = normal_white_matter_reference(t1c, t1n, segmentation)
        reach_mm = max(options.window_mm, 3.0 * options.smoothing_mm)
        margin = math.ceil(reach_mm / min(spacing_mm)) + 1
        box = bounding_box(core, margin)
        if box is None:  # unreachable: the region is not empty
            raise RuntimeError("empty tumour region after a non-empty check")
        region = core[box]
        heat, ratio = heatmap(
            np.asarray(t1c[box], dtype=np.float32),
            np.asarray(probabilities[(3, *box)], dtype=np.float32),
            region,
            reference,
            spacing_mm,
            options,
        )
        full_heat[box] = heat

        offset = np.array([s.start for s in box])
        allowed = region.copy()
        nearest: dict[str, float] = {}
        atlas = None
        registered: bool | None = None
        if options.exclude_structures:
            mapping = map_atlas(context, options)
            atlas = mapping.atlas
            registered = mapping.registered
            voxels = np.argwhere(region) + offset
            too_close = np.zeros(len(voxels), dtype=bool)
            for name in options.exclude_structures:
                distance = atlas.distances(name, voxels, upper_bound_mm=options.exclusion_margin_mm)
                too_close |= distance < options.exclusion_margin_mm
            allowed[region] = ~too_close
            excluded_fraction = float(too_close.mean()) if len(too_close) else 0.0
        else:
            excluded_fraction = 0.0
            notes.append("No structures excluded (exclude_structures is empty).")

        picks = pick_targets(heat, allowed, affine[:3, :3], options.k, options.min_separation_mm)
        if len(picks) < options.k:
            where = "in the region"
            if options.exclude_structures:
                where = (
                    f"at least {options.exclusion_margin_mm} mm from "
                    f"{', '.join(options.exclude_structures)}"
                )
            notes.append(
                f"{len(picks)} of {options.k} targets found: the heatmap has no more local "
                f"maxima {options.min_separation_mm} mm apart {where}."
            )
        targets = []
        for rank, local in enumerate(picks, start=1):
            voxel = np.asarray(local) + offset
            name_mm: tuple[str | None, float | None] = (None, None)
            if atlas is not None:
                for name in options.exclude_structures:
                    nearest[name] = float(atlas.distances(name, voxel[None, :])[0])
                closest = min(nearest, key=lambda n: nearest[n])
                name_mm = (closest, round(nearest[closest], 2))
            ras = affine @ np.append(voxel.astype(np.float64), 1.0)
            targets.append(
                BiopsyTarget(
                    rank=rank,
                    voxel=[int(v) for v in voxel],
                    ras_mm=[round(float(v), 2) for v in ras[:3]],
                    score=round(float(heat[local]), 4),
                    et_probability=round(float(probabilities[(3, *voxel)]), 4),
                    enhancement_ratio=round(float(ratio[local]), 3),
                    label=int(segmentation[tuple(voxel)]),
                    nearest_excluded_structure=name_mm[0],
                    nearest_excluded_mm=name_mm[1],
                )
            )
        url = self._write(context, full_heat)
        logger.debug(
            "hotspot %s: %d targets, %.2f s",
            context.study_id,
            len(targets),
            time.perf_counter() - started,
        )
        return self._result(
            options,
            targets,
            region_name,
            round(excluded_fraction, 4),
            round(reference, 4),
            registered,
            url,
            notes,
        )

    @staticmethod
    def _result(
        options: HotspotOptions,
        targets: list[BiopsyTarget],
        region: Literal["TC", "WT", "none"],
        excluded_fraction: float,
        reference: float | None,
        registered: bool | None,
        url: str,
        notes: list[str],
    ) -> HotspotResult:
        return HotspotResult(
            targets=targets,
            region=region,
            k=options.k,
            min_separation_mm=options.min_separation_mm,
            excluded_structures=options.exclude_structures,
            exclusion_margin_mm=options.exclusion_margin_mm,
            excluded_fraction=excluded_fraction,
            reference_t1c=reference,
            atlas_registered=registered,
            heatmap=url,
            notes=notes,
        )

    @staticmethod
    def _write(context: AnalysisContext, heat: npt.NDArray[np.float32]) -> str:
        return context.artefacts.write_nifti(
            "hotspot_heatmap",
            heat,
            description="Biopsy-target heatmap in [0, 1]: ET probability, t1c enhancement and "
            "local heterogeneity over the tumour core.",
        )


@hookimpl
def register_analyzers() -> list[Analyzer]:
    """The built-in hotspot analyzer."""
    return [HotspotAnalyzer()]
