"""Serving-time quality control: is this input, and this answer, plausible? (research use only)

Each finding is a flag with a ``code``, a ``severity`` (``info``, ``warning``, ``error``) and a
plain-language message. The checks (thresholds are options, see :class:`QualityOptions`):

Brain mask (voxels where any modality is > 0; inputs are skull-stripped with a zero
background):

* ``brain_volume_implausible``: volume outside 900-2000 mL (warning) or 600-2600 mL (error);
* ``brain_box_shaped``: the mask fills > 85 % of its bounding box (a head fills ~45-60 %), i.e.
  a box or an unstripped background (error);
* ``brain_slab``: the bounding box is thinner than 60 mm along some axis (error);
* ``brain_touches_border`` (warning) / ``brain_fills_field_of_view`` (error, all six faces):
  brain voxels on the faces of the image.

Modalities (on every 2nd voxel per axis):

* ``duplicate_modalities`` (error): a pair correlates at >= 0.99 inside the brain;
* CSF contrast. CSF is taken from the images, not from an atlas (it works on any grid without
  a registration): the 5 % darkest t1n voxels of the interior (eroded 2 voxels), non-tumour
  brain. Its median is compared with the normal brain median of each modality: CSF must be
  dark on t1c (< 0.8) and t2f (< 0.8) and bright on t2w (> 1.2). ``t2w_t2f_swapped`` (error)
  when t2w is dark and t2f bright at once, otherwise ``t2w_csf_not_bright``,
  ``t2f_csf_not_dark``, ``t1c_csf_not_dark`` (warnings);
* ``no_enhancement_in_et`` (error): with >= 0.1 mL of ET, the median over ET of
  ``(t1c / t1c_ref) / (t1n / t1n_ref)`` (refs: normal brain medians) is below 1.1, i.e. the
  segmentation found enhancement that t1c does not show (t1c copied from t1n, or mislabelled).

Labels:

* ``unknown_labels`` (error): values outside {0, 1, 2, 3};
* ``labels_outside_brain``: tumour voxels where every modality is 0, > 0.5 % of WT (warning) or
  > 5 % (error);
* ``et_islands`` (warning): nesting. In BraTS labels ET is part of the tumour core TC = NETC +
  ET by construction, so we check the connectivity instead: ET voxels lying in connected
  components of TC (26-connectivity) smaller than 0.1 mL, i.e. specks of enhancement not
  attached to any real core, form more than 20 % of ET;
* ``tumour_touches_border`` (warning): WT voxels on a face of the image (volumes are then lower
  bounds).

Uncertainty: ``tta_not_available`` (info) when the runner ran without mirror TTA, otherwise
``tta_disagreement_high`` (warning) when the mean disagreement (mean L1 distance between flip
softmaxes, 0 = full agreement) inside WT, TC or ET exceeds 0.25.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from cerebrascan.imaging.geometry import spacing_from_affine
from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.builtin._support import (
    bounding_box,
    channel,
    segmentation_of,
    voxel_volume_ml,
)
from plugins.hookspecs import hookimpl
from schemas.model_spec import BRATS_REGIONS

logger = logging.getLogger(__name__)

Severity = Literal["info", "warning", "error"]
_STRIDE = 2
_SEVERITY_ORDER: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2}


class QualityOptions(BaseModel):
    """Per-request thresholds of the quality analyzer."""

    model_config = ConfigDict(extra="forbid")

    brain_ml_warning: tuple[float, float] = Field(
        default=(900.0, 2000.0), description="Brain volume outside this range: warning (mL)."
    )
    brain_ml_error: tuple[float, float] = Field(
        default=(600.0, 2600.0), description="Brain volume outside this range: error (mL)."
    )
    max_box_fill: float = Field(
        default=0.85,
        gt=0.0,
        le=1.0,
        description="Brain / bounding-box volume above which the mask is box-shaped.",
    )
    min_extent_mm: float = Field(
        default=60.0, ge=0.0, description="Thinnest brain extent (mm) below which it is a slab."
    )
    duplicate_correlation: float = Field(
        default=0.99,
        gt=0.0,
        le=1.0,
        description="Correlation at which two modalities are duplicates.",
    )
    csf_dark_max: float = Field(
        default=0.8, gt=0.0, description="CSF / brain median above which CSF is not dark."
    )
    csf_bright_min: float = Field(
        default=1.2, gt=0.0, description="CSF / brain median below which CSF is not bright."
    )
    min_et_enhancement: float = Field(
        default=1.1,
        gt=0.0,
        description="Median relative t1c/t1n ratio in ET below which ET shows no enhancement.",
    )
    min_et_ml: float = Field(
        default=0.1, ge=0.0, description="ET volume (mL) needed for the enhancement check."
    )
    outside_brain_warning: float = Field(
        default=0.005, ge=0.0, le=1.0, description="Fraction of WT outside the brain: warning."
    )
    outside_brain_error: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Fraction of WT outside the brain: error."
    )
    island_ml: float = Field(
        default=0.1, ge=0.0, description="Tumour-core components smaller than this are islands."
    )
    max_et_island_fraction: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Fraction of ET in islands above which to warn."
    )
    max_mean_disagreement: float = Field(
        default=0.25, ge=0.0, description="Mean TTA disagreement in a region above which to warn."
    )

    @model_validator(mode="after")
    def _ordered(self) -> QualityOptions:
        for name in ("brain_ml_warning", "brain_ml_error"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo < hi, got {(lo, hi)}")
        if self.outside_brain_error < self.outside_brain_warning:
            raise ValueError(
                f"outside_brain_error ({self.outside_brain_error}) must be >= "
                f"outside_brain_warning ({self.outside_brain_warning})"
            )
        return self


class QualityFlag(BaseModel):
    """One finding."""

    code: str = Field(description="Stable identifier of the check, e.g. t2w_t2f_swapped.")
    severity: Severity = Field(description="info, warning or error.")
    message: str = Field(description="Plain-language explanation with the measured value.")
    value: float | None = Field(default=None, description="The measured value, when numeric.")


class QualityMeasurements(BaseModel):
    """The numbers the flags were derived from (null when not measurable)."""

    brain_volume_ml: float = Field(description="Voxels where any modality > 0 (mL).")
    brain_box_fill: float | None = Field(description="Brain volume / bounding-box volume.")
    brain_min_extent_mm: float | None = Field(description="Thinnest bounding-box extent (mm).")
    brain_border_faces: int = Field(description="Image faces (of 6) the brain touches.")
    csf_ratio: dict[str, float] = Field(
        description="Median CSF / median normal brain, per modality."
    )
    modality_correlation: dict[str, float] = Field(
        description="Correlation inside the brain of each modality pair ('a/b')."
    )
    et_enhancement_ratio: float | None = Field(
        description="Median over ET of (t1c / t1c_ref) / (t1n / t1n_ref)."
    )
    wt_outside_brain_fraction: float | None = Field(
        description="Fraction of WT voxels where every modality is 0."
    )
    et_island_fraction: float | None = Field(
        description="Fraction of ET in tumour-core components smaller than island_ml."
    )
    tumour_border_faces: int = Field(description="Image faces (of 6) the tumour touches.")
    mean_tta_disagreement: dict[str, float] | None = Field(
        description="Mean TTA disagreement per region (WT, TC, ET); null without TTA."
    )


class QualityResult(BaseModel):
    """Quality flags of one study."""

    passed: bool = Field(description="No error flag.")
    counts: dict[str, int] = Field(description="Number of flags per severity.")
    flags: list[QualityFlag] = Field(description="Findings, errors first.")
    measurements: QualityMeasurements = Field(description="Measured values behind the flags.")


def _flag(code: str, severity: Severity, message: str, value: float | None = None) -> QualityFlag:
    return QualityFlag(code=code, severity=severity, message=message, value=value)


def faces_touched(mask: npt.NDArray[np.bool_]) -> int:
    """Number of the six faces of the grid that ``mask`` reaches."""
    faces = 0
    for axis in range(3):
        for index in (0, mask.shape[axis] - 1):
            if np.take(mask, index, axis=axis).any():
                faces += 1
    return faces


def correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Pearson correlation of two value vectors (1 when either is constant)."""
    x = a.astype(np.float64) - float(a.mean())
    y = b.astype(np.float64) - float(b.mean())
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else 1.0


def brain_mask(images: Mapping[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.bool_]:
    """Voxels where any modality is > 0 (inputs are skull-stripped with a zero background).

    Raises:
        ValueError: ``images`` is empty.
    """
    if not images:
        raise ValueError("brain_mask needs at least one image, got none")
    shape = next(iter(images.values())).shape
    brain = np.zeros(shape, dtype=bool)
    # one scratch mask for every modality: fresh whole-grid temporaries cost page faults
    positive = np.empty(shape, dtype=bool)
    for image in images.values():
        brain |= np.greater(image, 0, out=positive)
    return brain


@dataclass(frozen=True)
class BrainCheck:
    """What :func:`check_brain` found.

    Attributes:
        flags: ``brain_volume_implausible``, ``brain_empty``, ``brain_box_shaped``,
            ``brain_slab``, ``brain_fills_field_of_view`` or ``brain_touches_border``.
        volume_ml: brain volume (mL).
        box_fill: brain / bounding-box volume; None for an empty brain.
        min_extent_mm: thinnest bounding-box extent (mm); None for an empty brain.
        border_faces: image faces (of 6) the brain reaches.
    """

    flags: tuple[QualityFlag, ...]
    volume_ml: float
    box_fill: float | None
    min_extent_mm: float | None
    border_faces: int


def check_brain(
    brain: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    voxel_ml: float,
    options: QualityOptions,
) -> BrainCheck:
    """Volume, shape, thickness and field-of-view checks of the brain mask.

    Args:
        brain: the brain mask (:func:`brain_mask`).
        spacing_mm: voxel size along the array axes.
        voxel_ml: volume of one voxel (mL).
        options: thresholds.

    Returns:
        The flags and measurements.
    """
    flags: list[QualityFlag] = []
    volume = int(np.count_nonzero(brain)) * voxel_ml
    lo, hi = options.brain_ml_error
    wlo, whi = options.brain_ml_warning
    if not lo <= volume <= hi:
        flags.append(
            _flag(
                "brain_volume_implausible",
                "error",
                f"Brain volume {volume:.0f} mL is far outside a head's ({wlo:.0f}-{whi:.0f} mL).",
                volume,
            )
        )
    elif not wlo <= volume <= whi:
        flags.append(
            _flag(
                "brain_volume_implausible",
                "warning",
                f"Brain volume {volume:.0f} mL is outside the usual {wlo:.0f}-{whi:.0f} mL.",
                volume,
            )
        )
    box = bounding_box(brain)
    if box is None:
        flags.append(_flag("brain_empty", "error", "Every modality is 0 everywhere: no brain."))
        return BrainCheck(tuple(flags), volume, None, None, 0)
    extents = [s.stop - s.start for s in box]
    fill = int(np.count_nonzero(brain)) / float(np.prod(extents))
    extent_mm = float(min(n * s for n, s in zip(extents, spacing_mm, strict=True)))
    if fill > options.max_box_fill:
        flags.append(
            _flag(
                "brain_box_shaped",
                "error",
                f"The brain mask fills {fill:.0%} of its bounding box (a head fills about "
                "45-60 %): the input looks like a box or is not skull-stripped.",
                fill,
            )
        )
    if extent_mm < options.min_extent_mm:
        flags.append(
            _flag(
                "brain_slab",
                "error",
                f"The brain is only {extent_mm:.0f} mm thick along one axis: partial coverage "
                "or a slab, not a whole brain.",
                extent_mm,
            )
        )
    faces = faces_touched(brain)
    if faces == 6:
        flags.append(
            _flag(
                "brain_fills_field_of_view",
                "error",
                "The brain mask reaches all six faces of the image: the background is not "
                "zero or the field of view is cropped to the brain.",
                float(faces),
            )
        )
    elif faces > 0:
        flags.append(
            _flag(
                "brain_touches_border",
                "warning",
                f"The brain mask reaches {faces} face(s) of the image: part of the brain may "
                "be outside the field of view.",
                float(faces),
            )
        )
    return BrainCheck(tuple(flags), volume, round(fill, 4), round(extent_mm, 1), faces)


@dataclass(frozen=True)
class DuplicateCheck:
    """What :func:`check_duplicates` found.

    Attributes:
        flags: one ``duplicate_modalities`` per near-identical pair.
        correlations: correlation inside the brain per modality pair (``'a/b'``); empty when
            the brain has fewer than 100 voxels.
    """

    flags: tuple[QualityFlag, ...]
    correlations: dict[str, float]


def check_duplicates(
    images: Mapping[str, npt.NDArray[np.float32]],
    brain: npt.NDArray[np.bool_],
    options: QualityOptions,
) -> DuplicateCheck:
    """Pairs of modalities that correlate at ``duplicate_correlation`` or more in the brain.

    Args:
        images: the modalities by name, on the grid of ``brain``.
        brain: the brain mask.
        options: thresholds.

    Returns:
        The flags and correlations.
    """
    flags: list[QualityFlag] = []
    correlations: dict[str, float] = {}
    if np.count_nonzero(brain) < 100:
        return DuplicateCheck((), correlations)
    values = {m: image[brain] for m, image in images.items()}
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            r = correlation(values[a], values[b])
            correlations[f"{a}/{b}"] = round(r, 4)
            if r >= options.duplicate_correlation:
                flags.append(
                    _flag(
                        "duplicate_modalities",
                        "error",
                        f"{a} and {b} are (near-)identical inside the brain (correlation "
                        f"{r:.4f}): one of them was probably uploaded twice.",
                        r,
                    )
                )
    return DuplicateCheck(tuple(flags), correlations)


@dataclass(frozen=True)
class ContrastCheck:
    """What :func:`check_contrast` found.

    Attributes:
        flags: CSF-contrast flags (``t2w_t2f_swapped``, ``t2w_csf_not_bright``,
            ``t2f_csf_not_dark``, ``t1c_csf_not_dark``), ``no_enhancement_in_et`` or
            ``contrast_not_checked``.
        csf_ratio: median CSF / median normal brain per modality (empty when not checked).
        et_enhancement_ratio: median over ET of ``(t1c / t1c_ref) / (t1n / t1n_ref)``; None
            when ET is too small or not checked.
    """

    flags: tuple[QualityFlag, ...]
    csf_ratio: dict[str, float]
    et_enhancement_ratio: float | None


def check_contrast(
    images: Mapping[str, npt.NDArray[np.float32]],
    brain: npt.NDArray[np.bool_],
    segmentation: npt.NDArray[np.uint8],
    voxel_ml: float,
    options: QualityOptions,
) -> ContrastCheck:
    """CSF contrast of each modality and enhancement inside ET (see the module docstring).

    Args:
        images: ``t1n``, ``t1c``, ``t2w`` and ``t2f`` on the grid of ``brain``.
        brain: the brain mask.
        segmentation: BraTS labels on the same grid.
        voxel_ml: volume of one voxel of that grid (mL).
        options: thresholds.

    Returns:
        The flags and measurements.
    """
    flags: list[QualityFlag] = []
    tumour = segmentation > 0
    interior = ndimage.binary_erosion(brain, iterations=2)
    normal = interior & ~ndimage.binary_dilation(tumour, iterations=2)
    if np.count_nonzero(normal) < 1000:
        flags.append(
            _flag(
                "contrast_not_checked",
                "info",
                "Too little normal-appearing brain to check the modalities' CSF contrast.",
            )
        )
        return ContrastCheck(tuple(flags), {}, None)
    references = {m: float(np.median(image[normal])) for m, image in images.items()}
    t1n = images["t1n"]
    csf = normal & (t1n <= np.percentile(t1n[normal], 5.0))
    ratio = {
        m: round(float(np.median(image[csf])) / references[m], 4) if references[m] > 0 else 0.0
        for m, image in images.items()
    }
    t2w_dark = ratio["t2w"] < 1.0
    t2f_bright = ratio["t2f"] > 1.0
    if t2w_dark and t2f_bright:
        flags.append(
            _flag(
                "t2w_t2f_swapped",
                "error",
                f"CSF (darkest t1n voxels) is dark on t2w (x{ratio['t2w']:.2f} of brain) and "
                f"bright on t2f (x{ratio['t2f']:.2f}): t2w and t2f look swapped.",
                ratio["t2w"],
            )
        )
    else:
        if ratio["t2w"] < options.csf_bright_min:
            flags.append(
                _flag(
                    "t2w_csf_not_bright",
                    "warning",
                    f"CSF is not bright on t2w (x{ratio['t2w']:.2f} of brain, expected > "
                    f"{options.csf_bright_min}): is t2w a T2-weighted image?",
                    ratio["t2w"],
                )
            )
        if ratio["t2f"] > options.csf_dark_max:
            flags.append(
                _flag(
                    "t2f_csf_not_dark",
                    "warning",
                    f"CSF is not dark on t2f (x{ratio['t2f']:.2f} of brain, expected < "
                    f"{options.csf_dark_max}): is t2f a FLAIR image?",
                    ratio["t2f"],
                )
            )
    if ratio["t1c"] > options.csf_dark_max:
        flags.append(
            _flag(
                "t1c_csf_not_dark",
                "warning",
                f"CSF (darkest t1n voxels) is not dark on t1c (x{ratio['t1c']:.2f} of brain): "
                "t1n and t1c disagree; check which images were uploaded as t1n and t1c.",
                ratio["t1c"],
            )
        )

    et = segmentation == 3
    enhancement: float | None = None
    if np.count_nonzero(et) * voxel_ml >= options.min_et_ml and min(references.values()) > 0:
        relative = (images["t1c"][et] / references["t1c"]) / np.maximum(
            images["t1n"][et] / references["t1n"], 1e-6
        )
        enhancement = round(float(np.median(relative)), 4)
        if enhancement < options.min_et_enhancement:
            flags.append(
                _flag(
                    "no_enhancement_in_et",
                    "error",
                    f"Voxels labelled enhancing tumour are not brighter on t1c than on t1n "
                    f"(median ratio {enhancement:.2f}, expected >= {options.min_et_enhancement}):"
                    " t1c may be a copy of t1n, or the ET label is wrong.",
                    enhancement,
                )
            )
    return ContrastCheck(tuple(flags), ratio, enhancement)


@dataclass(frozen=True)
class LabelCheck:
    """What :func:`check_labels` found.

    Attributes:
        flags: ``no_tumour``, ``unknown_labels``, ``labels_outside_brain``, ``et_islands`` or
            ``tumour_touches_border``.
        wt_outside_brain_fraction: fraction of WT where every modality is 0; None without
            tumour.
        et_island_fraction: fraction of ET in tumour-core components smaller than
            ``island_ml``; None without ET.
        tumour_border_faces: image faces (of 6) the tumour reaches.
    """

    flags: tuple[QualityFlag, ...]
    wt_outside_brain_fraction: float | None
    et_island_fraction: float | None
    tumour_border_faces: int


def check_labels(
    segmentation: npt.NDArray[np.uint8],
    brain: npt.NDArray[np.bool_],
    voxel_ml: float,
    options: QualityOptions,
) -> LabelCheck:
    """Unknown labels, tumour outside the brain, ET specks off the core, tumour at the border.

    Args:
        segmentation: BraTS labels.
        brain: the brain mask on the same grid.
        voxel_ml: volume of one voxel (mL).
        options: thresholds.

    Returns:
        The flags and measurements.
    """
    flags: list[QualityFlag] = []
    tumour = segmentation > 0
    box = bounding_box(tumour)
    if box is None:
        flags.append(_flag("no_tumour", "info", "The segmentation holds no tumour."))
        return LabelCheck(tuple(flags), None, None, 0)
    seg = segmentation[box]
    unknown = np.unique(seg[seg > 3])
    if unknown.size:
        flags.append(
            _flag(
                "unknown_labels",
                "error",
                f"The segmentation holds labels {unknown.tolist()} outside BraTS's 0-3.",
                float(unknown[0]),
            )
        )
    wt = seg > 0
    outside = float(np.count_nonzero(wt & ~brain[box])) / float(np.count_nonzero(wt))
    if outside > options.outside_brain_warning:
        severity: Severity = "error" if outside > options.outside_brain_error else "warning"
        flags.append(
            _flag(
                "labels_outside_brain",
                severity,
                f"{outside:.1%} of the tumour lies where every modality is 0 (outside the brain).",
                outside,
            )
        )
    et = seg == 3
    island_fraction: float | None = None
    if et.any():
        core = (seg == 1) | et
        labels, count = ndimage.label(core, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml
        small_component = sizes < options.island_ml
        small_component[0] = False
        island_fraction = float(np.count_nonzero(et & small_component[labels])) / float(
            np.count_nonzero(et)
        )
        if island_fraction > options.max_et_island_fraction:
            flags.append(
                _flag(
                    "et_islands",
                    "warning",
                    f"{island_fraction:.0%} of the enhancing tumour lies in specks of tumour "
                    f"core smaller than {options.island_ml} mL, not attached to a core: "
                    "possible false-positive enhancement.",
                    island_fraction,
                )
            )
    faces = faces_touched(tumour)
    if faces:
        flags.append(
            _flag(
                "tumour_touches_border",
                "warning",
                f"The tumour reaches {faces} face(s) of the image: it may extend beyond the "
                "field of view and its volumes are lower bounds.",
                float(faces),
            )
        )
    return LabelCheck(
        tuple(flags),
        round(outside, 5),
        None if island_fraction is None else round(island_fraction, 4),
        faces,
    )


@dataclass(frozen=True)
class UncertaintyCheck:
    """What :func:`check_uncertainty` found.

    Attributes:
        flags: ``tta_not_available`` or ``tta_disagreement_high``.
        mean_disagreement: mean TTA disagreement per region (WT, TC, ET) present in the
            segmentation; None without TTA.
    """

    flags: tuple[QualityFlag, ...]
    mean_disagreement: dict[str, float] | None


def check_uncertainty(
    disagreement: npt.NDArray[np.float16] | None,
    segmentation: npt.NDArray[np.uint8],
    options: QualityOptions,
) -> UncertaintyCheck:
    """Mean mirror-TTA disagreement inside WT, TC and ET against ``max_mean_disagreement``.

    Args:
        disagreement: per-voxel TTA disagreement, or None when the runner ran without TTA.
        segmentation: BraTS labels on the same grid.
        options: thresholds.

    Returns:
        The flags and the mean per region.

    Raises:
        ValueError: ``disagreement`` is not on the segmentation's grid.
    """
    if disagreement is None:
        flag = _flag(
            "tta_not_available",
            "info",
            "No test-time-augmentation disagreement (mirror TTA off): uncertainty not assessed.",
        )
        return UncertaintyCheck((flag,), None)
    if disagreement.shape != segmentation.shape:
        raise ValueError(
            f"tta_disagreement shape {disagreement.shape} differs from the segmentation's "
            f"{segmentation.shape}"
        )
    box = bounding_box(segmentation > 0)
    means: dict[str, float] = {}
    if box is None:
        return UncertaintyCheck((), means)
    seg = segmentation[box]
    values = np.asarray(disagreement[box], dtype=np.float32)
    for region, labels in BRATS_REGIONS.items():
        mask = np.isin(seg, labels)
        if mask.any():
            means[region] = round(float(values[mask].mean()), 4)
    high = {r: v for r, v in means.items() if v > options.max_mean_disagreement}
    if not high:
        return UncertaintyCheck((), means)
    worst = max(high, key=lambda r: high[r])
    flag = _flag(
        "tta_disagreement_high",
        "warning",
        f"The model is uncertain: mean mirror-TTA disagreement {high} exceeds "
        f"{options.max_mean_disagreement} (0 = all flips agree); review {worst} carefully.",
        high[worst],
    )
    return UncertaintyCheck((flag,), means)


class QualityAnalyzer(Analyzer):
    """Input and output plausibility checks (see the module docstring): composes the
    ``check_*`` functions and orders their flags, errors first."""

    name: ClassVar[str] = "quality"
    version: ClassVar[str] = "1.0.0"
    result_model: ClassVar[type[BaseModel]] = QualityResult
    options_model: ClassVar[type[BaseModel] | None] = QualityOptions
    needs: ClassVar[frozenset[Need]] = frozenset(
        {Need.IMAGES, Need.SEGMENTATION, Need.TTA_DISAGREEMENT}
    )
    depends_on: ClassVar[tuple[str, ...]] = ()
    timeout_s: ClassVar[float] = 60.0

    def analyze(self, context: AnalysisContext) -> QualityResult:
        """Run every check.

        Raises:
            ValueError: for invalid options, missing inputs or mismatched grids.
        """
        started = time.perf_counter()
        options = context.options_as(QualityOptions)
        images = {m: channel(context, m) for m in ("t1n", "t1c", "t2w", "t2f")}
        segmentation = segmentation_of(context, images["t1n"].shape)
        voxel_ml = voxel_volume_ml(context.affine)
        brain = brain_mask(images)
        # the modality checks read every 2nd voxel per axis: medians and correlations barely
        # move, the time drops eightfold
        step = slice(None, None, _STRIDE)
        small = {
            m: np.asarray(image[step, step, step], dtype=np.float32) for m, image in images.items()
        }
        small_brain = brain[step, step, step]
        brain_check = check_brain(brain, spacing_from_affine(context.affine), voxel_ml, options)
        duplicates = check_duplicates(small, small_brain, options)
        contrast = check_contrast(
            small, small_brain, segmentation[step, step, step], voxel_ml * _STRIDE**3, options
        )
        label_check = check_labels(segmentation, brain, voxel_ml, options)
        uncertainty = check_uncertainty(context.tta_disagreement, segmentation, options)

        flags = [
            *brain_check.flags,
            *duplicates.flags,
            *contrast.flags,
            *label_check.flags,
            *uncertainty.flags,
        ]
        ordered = sorted(flags, key=lambda f: _SEVERITY_ORDER[f.severity])
        counts = {s: sum(f.severity == s for f in ordered) for s in _SEVERITY_ORDER}
        measurements = QualityMeasurements(
            brain_volume_ml=round(brain_check.volume_ml, 2),
            brain_box_fill=brain_check.box_fill,
            brain_min_extent_mm=brain_check.min_extent_mm,
            brain_border_faces=brain_check.border_faces,
            csf_ratio=contrast.csf_ratio,
            modality_correlation=duplicates.correlations,
            et_enhancement_ratio=contrast.et_enhancement_ratio,
            wt_outside_brain_fraction=label_check.wt_outside_brain_fraction,
            et_island_fraction=label_check.et_island_fraction,
            tumour_border_faces=label_check.tumour_border_faces,
            mean_tta_disagreement=uncertainty.mean_disagreement,
        )
        logger.debug(
            "quality %s: %s in %.2f s", context.study_id, counts, time.perf_counter() - started
        )
        return QualityResult(
            passed=counts["error"] == 0, counts=counts, flags=ordered, measurements=measurements
        )


@hookimpl
def register_analyzers() -> list[Analyzer]:
    """The built-in quality analyzer."""
    return [QualityAnalyzer()]
