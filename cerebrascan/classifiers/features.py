"""Feature vector of one case for the tumour classifiers: radiomics, location, age (maths only).

Three groups, all keyed by name (the model keeps the column order it was trained with):

* **radiomics** (pyradiomics through :mod:`cerebrascan.radiomics.extract`): for each sub-region
  (NETC, SNFH, ET, TC, WT) and modality, the first-order, GLCM and GLSZM features of
  ``params/classifier_2mm.yaml`` on a 2 mm grid; shape features of ``params/classifier_shape.yaml``
  once per region; volumes and sub-region fractions. Intensities are z-scored over the brain
  (voxels with ``t1n > 0``) and scaled by 100 first, so scanner units do not matter. A region too
  small for texture gives NaN features (the models impute them).
* **location** (:func:`location_features`): share of the tumour in each SRI24 lobe / deep
  structure, infratentorial share, distances to the midline, the ventricles and the brain
  surface ("skull": the images are skull-stripped), contact with the brain surface (extra-axial
  tumours), and the position of the core inside the brain box.
* **age**: ``age_years`` when given, else NaN.

Training uses the phantoms' ground-truth labels; serving uses the predicted segmentation. The
SRI24 structures come as a :class:`cerebrascan.atlas.structures.StructureAtlas` on the case grid.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

from cerebrascan.atlas.structures import CEREBRAL_STRUCTURES, StructureAtlas
from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.imaging.regions import structure_mask
from cerebrascan.imaging.sitk_images import Geometry, to_sitk
from cerebrascan.radiomics.extract import extract_features, make_extractor

logger = logging.getLogger(__name__)

PARAMS_DIR = Path(__file__).resolve().parent.parent / "radiomics" / "params"
TEXTURE_PARAMS_FILE = PARAMS_DIR / "classifier_2mm.yaml"
SHAPE_PARAMS_FILE = PARAMS_DIR / "classifier_shape.yaml"
FEATURES_VERSION = "1.0.0"

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
TEXTURE_REGIONS: tuple[str, ...] = ("NETC", "SNFH", "ET", "TC", "WT")
SHAPE_REGIONS: tuple[str, ...] = ("ET", "TC", "WT")
LOCATION_STRUCTURES: tuple[str, ...] = (
    "frontal_lobe",
    "temporal",
    "parietal",
    "occipital",
    "insula",
    "thalamus",
    "brainstem",
    "corpus_callosum",
)
MIN_TEXTURE_VOXELS = 64
"""Regions with fewer voxels (1 mm grid; 8 voxels at 2 mm) get NaN texture features."""
SURFACE_SEARCH_MM = 20.0
"""Brain-surface distances are searched up to this far (larger ones are reported as it)."""
_CROP_MARGIN = 4
_NORMALISATION_STRIDE = 3


@functools.lru_cache(maxsize=2)
def _extractor(path: str) -> Any:
    extractor = make_extractor(path)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return extractor


def _affine_of_crop(
    affine: npt.NDArray[np.float64], lo: tuple[int, ...]
) -> npt.NDArray[np.float64]:
    shifted = np.array(affine, dtype=np.float64, copy=True)
    shifted[:3, 3] = affine[:3, :3] @ np.asarray(lo, dtype=np.float64) + affine[:3, 3]
    return shifted


def _box(mask: npt.NDArray[np.bool_], margin: int) -> tuple[slice, slice, slice]:
    idx = np.nonzero(mask)
    lo = [max(int(v.min()) - margin, 0) for v in idx]
    hi = [min(int(v.max()) + 1 + margin, n) for v, n in zip(idx, mask.shape, strict=True)]
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


def normalise_to_brain(
    image: npt.NDArray[Any], brain: npt.NDArray[np.bool_]
) -> tuple[float, float]:
    """Mean and standard deviation of ``image`` over the brain (every 3rd voxel per axis).

    Raises:
        ValueError: the brain mask is empty or the image is flat inside it.
    """
    step = _NORMALISATION_STRIDE
    sample = np.asarray(image)[::step, ::step, ::step][brain[::step, ::step, ::step]]
    if sample.size < 10:
        raise ValueError(f"brain mask holds {int(brain.sum())} voxels; cannot normalise")
    mean, std = float(sample.mean()), float(sample.std())
    if not std > 0:
        raise ValueError("image is constant inside the brain; cannot normalise")
    return mean, std


def _region_features(
    image: sitk.Image, mask: sitk.Image, extractor: Any, region: str
) -> dict[str, float]:
    """Features of one sub-region, empty (NaN downstream) where pyradiomics refuses it.

    A scattered region of enough voxels at 1 mm (e.g. isolated NETC voxels of a predicted
    segmentation) can vanish or flatten on the 2 mm texture grid; pyradiomics then raises
    ``ValueError`` ("Label (1) not present in mask", "too few dimensions"). That is a region
    too small to describe, as below :data:`MIN_TEXTURE_VOXELS`, not a failed case.
    """
    try:
        return extract_features(image, mask, label=1, extractor=extractor)
    except ValueError as exc:
        logger.debug("%s: no radiomics features (%s)", region, exc)
        return {}


def radiomics_features(
    images: Mapping[str, npt.NDArray[Any]],
    labels: npt.NDArray[np.integer],
    affine: npt.NDArray[np.float64],
    brain: npt.NDArray[np.bool_],
) -> dict[str, float]:
    """Radiomics, volume and fraction features of the sub-regions (see the module docstring).

    Args:
        images: modality name -> ``(x, y, z)`` intensities, all of :data:`MODALITIES`.
        labels: BraTS labels on the same grid, with at least one tumour voxel.
        affine: 4x4 voxel-to-RAS affine.
        brain: bool brain mask (normalisation region).

    Returns:
        ``{"<region>_<modality>_<feature>": value, "<region>_shape_<feature>": value,
        "<region>_log_volume_ml": value, "fraction_<a>_of_<b>": value}``; NaN where a region
        is too small.

    Raises:
        ValueError: no tumour voxel, or a modality missing.
    """
    missing = [m for m in MODALITIES if m not in images]
    if missing:
        raise ValueError(f"images lack modalities {missing}; need {list(MODALITIES)}")
    tumour = np.asarray(labels) > 0
    if not tumour.any():
        raise ValueError("the segmentation holds no tumour voxel")
    box = _box(tumour, _CROP_MARGIN)
    lo = tuple(s.start for s in box)
    geometry = Geometry.from_affine(_affine_of_crop(np.asarray(affine, np.float64), lo))
    label_box = np.asarray(labels)[box]
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    volumes = {region: int(structure_mask(label_box, region).sum()) for region in TEXTURE_REGIONS}

    volumes_sitk = {}
    for modality in MODALITIES:
        mean, std = normalise_to_brain(images[modality], brain)
        z = (np.asarray(images[modality], dtype=np.float32)[box] - np.float32(mean)) * np.float32(
            100.0 / std
        )
        volumes_sitk[modality] = to_sitk(z, geometry)

    texture = _extractor(str(TEXTURE_PARAMS_FILE))
    shape = _extractor(str(SHAPE_PARAMS_FILE))
    texture_names = [
        f"original_{cls}_{name}" for cls, names in texture.enabledFeatures.items() for name in names
    ]
    shape_names = [f"original_shape_{name}" for name in shape.enabledFeatures["shape"]]
    features: dict[str, float] = {}
    for region in TEXTURE_REGIONS:
        count = volumes[region]
        features[f"{region}_log_volume_ml"] = math.log1p(count * voxel_ml)
        mask_array = structure_mask(label_box, region).astype(np.uint8)
        mask_image = to_sitk(mask_array, geometry) if count else None
        for modality in MODALITIES:
            values: dict[str, float] = {}
            if mask_image is not None and count >= MIN_TEXTURE_VOXELS:
                values = _region_features(volumes_sitk[modality], mask_image, texture, region)
            for name in texture_names:
                features[f"{region}_{modality}_{name}"] = float(values.get(name, math.nan))
        if region in SHAPE_REGIONS:
            values = {}
            if mask_image is not None and count >= MIN_TEXTURE_VOXELS:
                values = _region_features(volumes_sitk["t1n"], mask_image, shape, region)
            for name in shape_names:
                features[f"{region}_{name}"] = float(values.get(name, math.nan))
    wt = max(volumes["WT"], 1)
    tc = volumes["TC"]
    features["fraction_TC_of_WT"] = tc / wt
    features["fraction_SNFH_of_WT"] = volumes["SNFH"] / wt
    features["fraction_ET_of_TC"] = volumes["ET"] / tc if tc else 0.0
    features["fraction_NETC_of_TC"] = volumes["NETC"] / tc if tc else 0.0
    return features


def _brain_surface_distance(
    brain: npt.NDArray[np.bool_], region: npt.NDArray[np.bool_], spacing: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Distance (mm) of each region voxel to the nearest non-brain voxel, capped at the search."""
    margin = [math.ceil(SURFACE_SEARCH_MM / s) + 1 for s in spacing]
    idx = np.nonzero(region)
    box = tuple(
        slice(max(int(v.min()) - m, 0), min(int(v.max()) + 1 + m, n))
        for v, m, n in zip(idx, margin, brain.shape, strict=True)
    )
    inside = np.pad(brain[box], 1, constant_values=False)
    distance = ndimage.distance_transform_edt(inside, sampling=spacing)[1:-1, 1:-1, 1:-1]
    values: npt.NDArray[np.float64] = np.minimum(distance[region[box]], SURFACE_SEARCH_MM)
    return values


def location_features(
    labels: npt.NDArray[np.integer],
    affine: npt.NDArray[np.float64],
    brain: npt.NDArray[np.bool_],
    atlas: StructureAtlas,
) -> dict[str, float]:
    """Where the tumour lies (see the module docstring); mm through the affine.

    Args:
        labels: BraTS labels with at least one tumour voxel.
        affine: 4x4 voxel-to-RAS affine.
        brain: bool brain mask (skull-stripped images: the brain is where ``t1n > 0``).
        atlas: SRI24 structure masks on this grid.

    Returns:
        ``location_*`` features.

    Raises:
        ValueError: no tumour voxel or no brain voxel.
    """
    labels = np.asarray(labels)
    wt = labels > 0
    if not wt.any():
        raise ValueError("the segmentation holds no tumour voxel")
    if not brain.any():
        raise ValueError("the brain mask is empty")
    core = (labels == 1) | (labels == 3)
    region = core if core.sum() >= 10 else wt
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.asarray(spacing_from_affine(affine))
    wt_voxels = np.argwhere(wt)
    region_voxels = np.argwhere(region)
    ras = region_voxels @ affine[:3, :3].T + affine[:3, 3]
    centre = ras.mean(axis=0)
    step = 2
    brain_voxels = np.argwhere(brain[::step, ::step, ::step]) * step
    brain_ras = brain_voxels @ affine[:3, :3].T + affine[:3, 3]
    brain_lo, brain_hi = brain_ras.min(axis=0), brain_ras.max(axis=0)
    midline_x = float(np.median(brain_ras[:, 0]))
    features: dict[str, float] = {}
    index = tuple(wt_voxels[:, k] for k in range(3))
    region_index = tuple(region_voxels[:, k] for k in range(3))
    cerebral = np.zeros(len(region_voxels), dtype=bool)
    for name in LOCATION_STRUCTURES:
        mask = atlas.mask(name)
        features[f"location_fraction_{name}"] = float(mask[index].mean())
        if name in CEREBRAL_STRUCTURES:
            cerebral |= mask[region_index]
    stem = atlas.mask("brainstem")
    if stem.any():
        stem_z = np.argwhere(stem[::step, ::step, ::step]) * step
        top = float(np.percentile((stem_z @ affine[:3, :3].T + affine[:3, 3])[:, 2], 95.0))
    else:
        top = -math.inf
    infratentorial = (~cerebral & (ras[:, 2] <= top)) | stem[region_index]
    features["location_infratentorial_fraction"] = float(infratentorial.mean())
    features["location_midline_distance_mm"] = float(abs(centre[0] - midline_x))
    features["location_min_midline_distance_mm"] = float(np.abs(ras[:, 0] - midline_x).min())
    cap = 3.0 * SURFACE_SEARCH_MM
    ventricle = atlas.distances("ventricles", _surface(region), cap)
    features["location_ventricle_distance_mm"] = (
        float(min(ventricle.min(), cap)) if len(ventricle) else cap
    )
    features["location_ventricle_overlap_fraction"] = float(atlas.mask("ventricles")[index].mean())
    depth = _brain_surface_distance(brain, region, spacing)
    features["location_skull_distance_mm"] = float(depth.min())
    features["location_centre_depth_mm"] = float(np.median(depth))
    features["location_surface_contact_fraction"] = float((depth <= 3.0).mean())
    extent = np.maximum(brain_hi - brain_lo, 1e-6)
    relative = (centre - brain_lo) / extent
    features["location_anterior_position"] = float(relative[1])
    features["location_superior_position"] = float(relative[2])
    return features


def _surface(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    eroded = ndimage.binary_erosion(mask)
    return np.argwhere(mask & ~eroded)


def case_features(
    images: Mapping[str, npt.NDArray[Any]],
    labels: npt.NDArray[np.integer],
    affine: npt.NDArray[np.float64],
    atlas: StructureAtlas,
    age_years: float | None = None,
) -> dict[str, float]:
    """All classifier features of one case (radiomics, location and age).

    Args:
        images: modality -> ``(x, y, z)`` intensities (all of :data:`MODALITIES`), 0 outside the
            brain (skull-stripped).
        labels: BraTS labels on the same grid.
        affine: 4x4 voxel-to-RAS affine.
        atlas: SRI24 structures on the grid.
        age_years: the patient's age, or None.

    Returns:
        Feature name -> value (NaN where undefined).

    Raises:
        ValueError: no tumour, no brain, or a missing modality.
    """
    brain = np.asarray(images["t1n"]) > 0 if "t1n" in images else None
    if brain is None:
        raise ValueError(f"images lack t1n; need {list(MODALITIES)}")
    features = radiomics_features(images, labels, affine, brain)
    features.update(location_features(labels, affine, brain, atlas))
    features["age_years"] = math.nan if age_years is None else float(age_years)
    return features
