"""Does a study already lie on the SRI24 grid with the SRI24 anatomy? (maths only)

BraTS data are on the SRI24 grid by voxel index, whatever their header says, so the header's
orientation and origin are not compared. :func:`assess_alignment` asks for the same shape and
voxel size as the atlas T1 *and* agreeing anatomy: normalised cross-correlation (NCC) of atlas
T1 and study ``t1n`` inside the union of both brains, and Dice of the two brain masks (nonzero
voxels), both above thresholds. When it says no, the atlas is registered
(:mod:`cerebrascan.atlas.registration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cerebrascan.imaging.geometry import spacing_from_affine

#: Default thresholds of "the anatomy matches the atlas by voxel index" (see assess_alignment).
DEFAULT_MIN_NCC = 0.85
DEFAULT_MIN_BRAIN_DICE = 0.95
ANALYSIS_STRIDE = 2
"""NCC and Dice use every 2nd voxel per axis: ~8x fewer voxels, the same answer."""


@dataclass(frozen=True)
class AlignmentCheck:
    """Whether a study lies on the SRI24 grid with the SRI24 anatomy.

    Attributes:
        same_grid: shape and voxel size equal to the atlas T1's (voxel-index match).
        ncc: NCC of atlas T1 and study t1n inside the union of both brains (None when the
            grids differ).
        brain_dice: Dice of the atlas and study brain masks (None when the grids differ).
        matches: ``same_grid`` and both measures above their thresholds.
        reason: plain-language explanation of ``matches``.
    """

    same_grid: bool
    ncc: float | None
    brain_dice: float | None
    matches: bool
    reason: str


def validate_grid(t1n: npt.NDArray[Any], affine: npt.NDArray[Any]) -> None:
    """Check that ``t1n`` is a 3D volume and ``affine`` a finite, invertible 4x4 matrix.

    Raises:
        ValueError: naming the bad shape or matrix.
    """
    if t1n.ndim != 3:
        raise ValueError(f"t1n must be a 3D volume, got shape {t1n.shape}")
    if np.asarray(affine).shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {np.asarray(affine).shape}")
    if not np.isfinite(affine).all() or abs(np.linalg.det(np.asarray(affine)[:3, :3])) < 1e-9:
        raise ValueError(f"affine must be finite and invertible, got {np.asarray(affine).tolist()}")


def normalised_correlation(
    a: npt.NDArray[Any], b: npt.NDArray[Any], mask: npt.NDArray[np.bool_]
) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask`` (0 for constant or empty input)."""
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    if x.size < 2:
        return 0.0
    x -= x.mean()
    y -= y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice coefficient of two bool masks (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def assess_alignment(
    t1n: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    atlas_t1: npt.NDArray[np.float32],
    atlas_affine: npt.NDArray[np.float64],
    min_ncc: float = DEFAULT_MIN_NCC,
    min_brain_dice: float = DEFAULT_MIN_BRAIN_DICE,
) -> AlignmentCheck:
    """Check whether the study's anatomy matches the SRI24 atlas voxel by voxel.

    Args:
        t1n: study T1 ``(x, y, z)``, 0 outside the brain.
        affine: the study's 4x4 voxel-to-RAS affine.
        atlas_t1: the SRI24 T1 (:func:`cerebrascan.atlas.files.load_sri24_t1`).
        atlas_affine: its affine.
        min_ncc: smallest NCC accepted as "same anatomy".
        min_brain_dice: smallest brain-mask Dice accepted as "same anatomy".

    Returns:
        The check, with its measures.

    Raises:
        ValueError: for a non-3D image or a singular affine.
    """
    validate_grid(t1n, affine)
    spacing = np.asarray(spacing_from_affine(affine))
    same_shape = t1n.shape == atlas_t1.shape
    same_spacing = bool(
        np.allclose(spacing, np.asarray(spacing_from_affine(atlas_affine)), atol=1e-3)
    )
    if not (same_shape and same_spacing):
        reason = (
            f"grid {t1n.shape} with voxel size {np.round(spacing, 3).tolist()} mm "
            f"differs from the SRI24 grid {atlas_t1.shape} at 1 mm"
        )
        return AlignmentCheck(False, None, None, False, reason)
    step = slice(None, None, ANALYSIS_STRIDE)
    study = np.asarray(t1n[step, step, step], dtype=np.float32)
    atlas = atlas_t1[step, step, step]
    study_brain = study > 0
    atlas_brain = atlas > 0
    ncc = normalised_correlation(study, atlas, study_brain | atlas_brain)
    brain_dice = dice(study_brain, atlas_brain)
    matches = ncc >= min_ncc and brain_dice >= min_brain_dice
    verdict = "matches" if matches else "does not match"
    reason = (
        f"SRI24 grid; anatomy {verdict} the atlas by voxel index (NCC {ncc:.3f}, threshold "
        f"{min_ncc}; brain Dice {brain_dice:.3f}, threshold {min_brain_dice})"
    )
    return AlignmentCheck(True, ncc, brain_dice, matches, reason)
