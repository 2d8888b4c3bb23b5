"""Radiomics features of an image region, and per BraTS sub-region and modality of a study.

pyradiomics' :class:`~radiomics.featureextractor.RadiomicsFeatureExtractor` does the maths;
this module feeds it in-memory images and flattens its answer:

- :func:`load_params` is the only step that reads a file: a pyradiomics parameter YAML (by
  default :data:`DEFAULT_PARAMS_FILE`, ``params/brats_ibsi.yaml``), or a copy of a dict.
- :func:`make_extractor` validates parameters (pyradiomics' own schema) into an extractor.
- :func:`extract_features` runs it on a SimpleITK image and mask; :func:`extract_array_features`
  on ``(x, y, z)`` numpy arrays with a :class:`~cerebrascan.imaging.sitk_images.Geometry` (or a
  RAS affine, or voxel sizes).
  Both return ``{"original_firstorder_Mean": ..., ...}`` as floats, diagnostics dropped.
- :func:`extract_regions` does so for each sub-region (NETC, SNFH, ET, TC, WT of BraTS labels
  1/2/3) and each modality, keyed ``"{region}_{modality}_{feature}"``; regions that are empty,
  smaller than ``min_voxels`` or flatter than the parameters allow are reported as skipped.

Arrays follow the rest of CerebraScan: ``(x, y, z)`` voxel order with a voxel-to-RAS affine
(nibabel's convention); they are converted to SimpleITK's ``(z, y, x)`` buffers and LPS space.

pyradiomics (``pyradiomics-bhklab``, the ``radiomics`` extra) is imported on first use, so this
module imports without it. pyradiomics logs through the ``radiomics`` logger, to which it adds a
stderr handler at WARNING on import.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)
import yaml

from cerebrascan.imaging.regions import STRUCTURES, structure_mask
from cerebrascan.imaging.sitk_images import Geometry, as_geometry, to_sitk

logger = logging.getLogger(__name__)

DEFAULT_PARAMS_FILE = Path(__file__).resolve().parent / "params" / "brats_ibsi.yaml"
"""CerebraScan's parameter file for BraTS MRI (1 mm isotropic, z-score, bin width 5)."""

REGIONS: tuple[str, ...] = STRUCTURES
"""Sub-regions :func:`extract_regions` reports, in this order: NETC, SNFH, ET, TC, WT."""

MIN_REGION_VOXELS = 10
"""Regions with fewer voxels (on the input grid) are skipped, not extracted."""

ParamsSource = Mapping[str, Any] | str | os.PathLike[str]
"""A pyradiomics parameter dict, or the path of a parameter YAML file."""

_DIAGNOSTICS_PREFIX = "diagnostics_"
_BRATS_LABEL_VALUES = (0, 1, 2, 3)


def load_params(source: ParamsSource | None = None) -> dict[str, Any]:
    """A pyradiomics parameter dict: read from a YAML file, or a deep copy of a mapping.

    Args:
        source: a parameter mapping, the path of a parameter YAML file, or ``None`` for
            :data:`DEFAULT_PARAMS_FILE`. Not validated here; see :func:`make_extractor`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not YAML, or does not hold a mapping.
        TypeError: ``source`` is neither a mapping nor a path.
    """
    if source is None:
        source = DEFAULT_PARAMS_FILE
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"params must be a mapping or the path of a YAML file, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"pyradiomics parameter file {str(path)!r} does not exist")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(
            f"pyradiomics parameter file {str(path)!r} is not valid YAML: {exc}"
        ) from exc
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(
            f"pyradiomics parameter file {str(path)!r} must hold a mapping, "
            f"got {type(params).__name__}"
        )
    return params


def _featureextractor() -> Any:
    """``radiomics.featureextractor``, imported on first use.

    Raises:
        RuntimeError: pyradiomics is not installed.
    """
    try:
        return importlib.import_module("radiomics.featureextractor")
    except ModuleNotFoundError as exc:
        if exc.name != "radiomics":
            raise
        raise RuntimeError(
            "radiomics feature extraction needs pyradiomics-bhklab, which is not installed "
            "(pip install -c constraints.txt --build-constraint constraints.txt -e '.[radiomics]')"
        ) from exc


def make_extractor(params: ParamsSource | None = None) -> Any:
    """A ``RadiomicsFeatureExtractor`` for validated parameters.

    Args:
        params: as for :func:`load_params` (``None``: the repository's parameter file).

    Raises:
        ValueError: pyradiomics rejects the parameters; its message names the setting, e.g.
            ``Path: '/setting/binWidth'``.
        RuntimeError: pyradiomics is not installed.
    """
    featureextractor = _featureextractor()
    pykwalify_errors = importlib.import_module("pykwalify.errors")
    loaded = load_params(params)
    try:
        return featureextractor.RadiomicsFeatureExtractor(loaded)
    except pykwalify_errors.PyKwalifyException as exc:
        detail = getattr(exc, "msg", None) or str(exc)
        raise ValueError(f"invalid pyradiomics parameters: {detail}") from exc
    except ValueError as exc:
        raise ValueError(f"invalid pyradiomics parameters: {exc}") from exc


def _resolve_extractor(params: ParamsSource | None, extractor: Any | None) -> Any:
    if extractor is not None:
        if params is not None:
            raise ValueError("give params or extractor, not both")
        return extractor
    return make_extractor(params)


def _run(extractor: Any, image: sitk.Image, mask: sitk.Image, label: int) -> dict[str, float]:
    """Features of ``mask == label`` in ``image`` as floats, diagnostics dropped."""
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 1:
        raise ValueError(f"label must be an integer >= 1, got {label!r}")
    result = extractor.execute(image, mask, label=int(label))
    return {
        str(name): float(value)
        for name, value in result.items()
        if not str(name).startswith(_DIAGNOSTICS_PREFIX)
    }


def extract_features(
    image: sitk.Image,
    mask: sitk.Image,
    params: ParamsSource | None = None,
    *,
    label: int = 1,
    extractor: Any | None = None,
) -> dict[str, float]:
    """Radiomics features of the region ``mask == label`` of ``image``.

    Args:
        image: a 3D SimpleITK image.
        mask: a label map on the same grid (pyradiomics checks the geometry).
        params: pyradiomics parameters, see :func:`load_params` (``None``: the repository's file).
        label: the mask value of the region.
        extractor: a :func:`make_extractor` result to reuse instead of ``params``.

    Returns:
        ``{"<imageType>_<class>_<feature>": value}`` (e.g. ``original_shape_VoxelVolume``), one
        entry per enabled feature; a feature undefined for the region is NaN.

    Raises:
        TypeError: ``image`` or ``mask`` is not a SimpleITK image (paths are not read here).
        ValueError: bad parameters, an invalid ``label``, or a region pyradiomics refuses
            (label absent, a single voxel, too few dimensions, image/mask mismatch).
    """
    for name, value in (("image", image), ("mask", mask)):
        if not isinstance(value, sitk.Image):
            raise TypeError(f"{name} must be a SimpleITK image, got {type(value).__name__}")
    return _run(_resolve_extractor(params, extractor), image, mask, label)


def extract_array_features(
    image: npt.ArrayLike,
    mask: npt.ArrayLike,
    geometry: Geometry | npt.ArrayLike,
    params: ParamsSource | None = None,
    *,
    label: int = 1,
    extractor: Any | None = None,
) -> dict[str, float]:
    """:func:`extract_features` of ``(x, y, z)`` arrays placed by ``geometry``.

    Args:
        image: intensities; cast to float32 (pyradiomics keeps an integer type through
            interpolation).
        mask: integer label map of the same shape.
        geometry: a :class:`Geometry`, a 4x4 voxel-to-RAS affine, or 3 voxel sizes (mm).
        params, label, extractor: as for :func:`extract_features`.

    Raises:
        ValueError: shapes differ, the image is not finite, the mask is not integral, or as
            :func:`extract_features`.
    """
    voxels = np.asarray(image)
    labels = np.asarray(mask)
    if voxels.shape != labels.shape:
        raise ValueError(f"image shape {voxels.shape} and mask shape {labels.shape} differ")
    _check_image(voxels, "image")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"mask must hold integer labels, got dtype {labels.dtype}")
    grid = as_geometry(geometry)
    return _run(
        _resolve_extractor(params, extractor),
        to_sitk(voxels.astype(np.float32, copy=False), grid),
        to_sitk(labels.astype(np.uint32, copy=False), grid),
        label,
    )


@dataclass(frozen=True)
class RegionFeatures:
    """What :func:`extract_regions` found.

    Attributes:
        features: ``{"{region}_{modality}_{feature}": value}``, e.g.
            ``"WT_t1c_original_firstorder_Mean"``.
        skipped: regions not extracted, with the reason (empty, too small, too flat).
        voxels: voxel count of every requested region on the input grid.
    """

    features: dict[str, float]
    skipped: dict[str, str]
    voxels: dict[str, int]


def _check_image(voxels: npt.NDArray[Any], name: str) -> None:
    if voxels.ndim != 3:
        raise ValueError(f"{name} must be 3D (x, y, z), got shape {voxels.shape}")
    if not (np.issubdtype(voxels.dtype, np.number) or voxels.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {voxels.dtype}")
    if np.issubdtype(voxels.dtype, np.inexact) and not np.isfinite(voxels).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(voxels)).sum())} NaN/inf voxels")


def _spanned_dimensions(mask: npt.NDArray[np.bool_]) -> int:
    """Number of array axes along which a non-empty ``mask`` extends over more than one voxel."""
    return sum(int(np.ptp(coords) > 0) for coords in np.nonzero(mask))


def _skip_reason(
    mask: npt.NDArray[np.bool_], count: int, min_voxels: int, min_dims: int
) -> str | None:
    if count == 0:
        return "empty (0 voxels)"
    if count < min_voxels:
        return f"{count} voxels, fewer than min_voxels={min_voxels}"
    dims = _spanned_dimensions(mask)
    if dims < min_dims:
        return f"spans {dims} dimension(s), fewer than minimumROIDimensions={min_dims}"
    return None


def extract_regions(
    images: Mapping[str, npt.ArrayLike],
    labels: npt.ArrayLike,
    geometry: Geometry | npt.ArrayLike,
    params: ParamsSource | None = None,
    *,
    regions: Sequence[str] = REGIONS,
    min_voxels: int = MIN_REGION_VOXELS,
) -> RegionFeatures:
    """Radiomics features of each BraTS sub-region in each modality.

    Regions: NETC (label 1), SNFH (2), ET (3), TC (1 or 3) and WT (1, 2 or 3), each extracted
    as a binary mask. A region with fewer than ``min_voxels`` voxels, or spanning fewer array
    dimensions than the parameters' ``minimumROIDimensions``, is skipped and reported in
    :attr:`RegionFeatures.skipped` (also logged), not raised.

    Args:
        images: modality name (e.g. ``t1n``; letters and digits, no ``_``) to ``(x, y, z)``
            intensities, all on the grid of ``labels``.
        labels: BraTS label map (0 background, 1 NETC, 2 SNFH, 3 ET).
        geometry: a :class:`Geometry`, a 4x4 voxel-to-RAS affine, or 3 voxel sizes (mm).
        params: pyradiomics parameters, see :func:`load_params` (``None``: the repository's
            ``params/brats_ibsi.yaml``).
        regions: the sub-regions to extract, from :data:`REGIONS`.
        min_voxels: smallest region extracted (voxels on the input grid), >= 1.

    Returns:
        Features keyed ``"{region}_{modality}_{feature}"``, the skipped regions and each
        region's voxel count.

    Raises:
        ValueError: a bad argument (named with its value), or pyradiomics refusing a region
            that passed the checks above (the message names region and modality).
    """
    if not images:
        raise ValueError("images must hold at least one modality, got none")
    label_map = np.asarray(labels)
    if label_map.ndim != 3:
        raise ValueError(f"labels must be 3D (x, y, z), got shape {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"labels must hold integer BraTS labels, got dtype {label_map.dtype}")
    unexpected = sorted(set(np.unique(label_map).tolist()) - set(_BRATS_LABEL_VALUES))
    if unexpected:
        raise ValueError(f"labels must be BraTS labels {_BRATS_LABEL_VALUES}, found {unexpected}")
    unknown = [region for region in regions if region not in REGIONS]
    if unknown or not regions:
        raise ValueError(f"regions must be a non-empty selection of {REGIONS}, got {list(regions)}")
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, int) or min_voxels < 1:
        raise ValueError(f"min_voxels must be an integer >= 1, got {min_voxels!r}")

    grid = as_geometry(geometry)
    volumes: dict[str, sitk.Image] = {}
    for modality, image in images.items():
        if not isinstance(modality, str) or not modality.isalnum():
            raise ValueError(f"modality names must be letters and digits only, got {modality!r}")
        voxels = np.asarray(image)
        _check_image(voxels, f"images[{modality!r}]")
        if voxels.shape != label_map.shape:
            raise ValueError(
                f"images[{modality!r}] shape {voxels.shape} differs from labels shape "
                f"{label_map.shape}"
            )
        volumes[modality] = to_sitk(voxels.astype(np.float32, copy=False), grid)

    extractor = make_extractor(params)
    min_dims = int(extractor.settings.get("minimumROIDimensions", 2))

    features: dict[str, float] = {}
    skipped: dict[str, str] = {}
    counts: dict[str, int] = {}
    for region in regions:
        mask = structure_mask(label_map, region)
        counts[region] = int(mask.sum())
        reason = _skip_reason(mask, counts[region], min_voxels, min_dims)
        if reason is not None:
            skipped[region] = reason
            logger.info("radiomics: region %s skipped: %s", region, reason)
            continue
        mask_image = to_sitk(mask.astype(np.uint8), grid)
        for modality, volume in volumes.items():
            try:
                values = _run(extractor, volume, mask_image, 1)
            except ValueError as exc:
                raise ValueError(
                    f"radiomics of region {region!r} ({counts[region]} voxels) in modality "
                    f"{modality!r} failed: {exc}"
                ) from exc
            features.update({f"{region}_{modality}_{name}": v for name, v in values.items()})
        logger.debug("radiomics: region %s (%d voxels) extracted", region, counts[region])
    return RegionFeatures(features=features, skipped=skipped, voxels=counts)
