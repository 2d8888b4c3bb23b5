"""Put series on one grid: exact reorientation and resampling by DICOM geometry (maths).

Series of one frame of reference share patient coordinates, so a voxel of the reference grid is
found in another series by composing the two affines; no registration is needed (nor wanted:
it could only add error). Series of different frames of reference need a rigid registration,
which the study builder takes as an injected callable.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from scipy import ndimage


def reorient(
    data: npt.NDArray[np.float32], affine: npt.NDArray[np.float64], axis_codes: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Permute and flip the array axes to the closest ``axis_codes`` (e.g. ``"LAS"``), without
    interpolation: the same voxels, described by the adjusted affine.

    Args:
        data: a 3-D volume.
        affine: its voxel-to-RAS affine.
        axis_codes: the target axis codes, one of each L/R, A/P, S/I.
    """
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(axis_codes)))
    moved = np.ascontiguousarray(apply_orientation(data, transform), dtype=np.float32)
    new_affine = np.asarray(affine @ inv_ornt_aff(transform, data.shape), dtype=np.float64)
    return moved, new_affine


def same_grid(
    shape_a: tuple[int, ...],
    affine_a: npt.NDArray[np.float64],
    shape_b: tuple[int, ...],
    affine_b: npt.NDArray[np.float64],
    tolerance_mm: float = 1e-3,
) -> bool:
    """Whether two grids coincide (same shape, affines within ``tolerance_mm``)."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.max(np.abs(affine_a - affine_b)) <= tolerance_mm
    )


def resample_to_grid(
    data: npt.NDArray[np.float32],
    affine: npt.NDArray[np.float64],
    target_shape: tuple[int, int, int],
    target_affine: npt.NDArray[np.float64],
    *,
    order: int = 1,
) -> npt.NDArray[np.float32]:
    """Sample a volume at the voxel centres of another grid (same patient coordinates).

    Args:
        data: the moving volume.
        affine: its voxel-to-RAS affine.
        target_shape: the reference grid's shape.
        target_affine: the reference grid's voxel-to-RAS affine.
        order: spline order (1: trilinear, which keeps intensities within the input's range).

    Returns:
        float32 of ``target_shape``; 0 outside the moving volume's field of view.
    """
    if same_grid(data.shape, affine, target_shape, target_affine):
        return np.array(data, dtype=np.float32, copy=True)
    voxel_to_voxel = np.linalg.inv(affine) @ target_affine
    resampled = ndimage.affine_transform(
        np.asarray(data, dtype=np.float32),
        voxel_to_voxel[:3, :3],
        offset=voxel_to_voxel[:3, 3],
        output_shape=tuple(target_shape),
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    return np.asarray(resampled, dtype=np.float32)


def field_of_view_overlap(
    shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    target_shape: tuple[int, int, int],
    target_affine: npt.NDArray[np.float64],
) -> float:
    """Fraction of the target grid's voxel centres that fall inside the other grid."""
    grid = np.stack(
        np.meshgrid(*[np.linspace(0, n - 1, 12) for n in target_shape], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    world = grid @ target_affine[:3, :3].T + target_affine[:3, 3]
    inverse = np.linalg.inv(affine)
    voxels = world @ inverse[:3, :3].T + inverse[:3, 3]
    inside = np.all((voxels >= -0.5) & (voxels <= np.asarray(shape) - 0.5), axis=1)
    return float(np.mean(inside))
