"""From a stored grid (any affine) to display planes in radiological convention.

The grid is turned to the closest RAS axes (``nibabel.orientations``: a permutation and flips,
no resampling; an oblique grid shows along its nearest axes). A plane's slice index is the voxel
index on the stored grid along the axis that cuts it, as NIfTI viewers show it. Every 2D image
comes out with the patient's right on the viewer's left; axial anterior up, coronal and sagittal
superior up, sagittal anterior on the left. Pure array maths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
NORMAL_RAS_AXIS: dict[Plane, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""The RAS axis each plane is cut along (R, A, S)."""
EDGE_LETTERS: dict[Plane, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}
"""(top, bottom, left, right) patient directions at the image's edges."""


@dataclass(frozen=True)
class DisplayGrid:
    """How a stored grid maps onto RAS display axes.

    Attributes:
        source_axis: for each RAS axis (R, A, S), the voxel axis of the stored grid along it.
        reversed: for each RAS axis, whether the voxel index grows towards L, P or I.
        spacing_mm: voxel size along each RAS axis.
        shape: the grid's size along each RAS axis.
    """

    source_axis: tuple[int, int, int]
    reversed: tuple[bool, bool, bool]
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]

    def slice_count(self, plane: Plane) -> int:
        """Number of slices of ``plane``."""
        return self.shape[NORMAL_RAS_AXIS[plane]]

    def stored_axis(self, plane: Plane) -> int:
        """The stored grid's voxel axis that ``plane`` is cut along."""
        return self.source_axis[NORMAL_RAS_AXIS[plane]]

    def ras_index(self, plane: Plane, index: int) -> int:
        """Index along the RAS axis of ``plane`` for the stored-grid slice ``index``."""
        axis = NORMAL_RAS_AXIS[plane]
        return self.shape[axis] - 1 - index if self.reversed[axis] else index

    def stored_index(self, plane: Plane, ras_index: int) -> int:
        """Stored-grid slice index of the RAS-ordered slice ``ras_index`` (its own inverse)."""
        return self.ras_index(plane, ras_index)

    def pixel_mm(self, plane: Plane) -> tuple[float, float]:
        """(row, column) pixel size in mm of a display image of ``plane``."""
        rows, cols = _in_plane_axes(plane)
        return self.spacing_mm[rows], self.spacing_mm[cols]


def display_grid(affine: npt.NDArray[np.floating], shape: tuple[int, ...]) -> DisplayGrid:
    """The :class:`DisplayGrid` of a voxel-to-RAS ``affine`` and spatial ``shape``."""
    affine = np.asarray(affine, dtype=np.float64)
    orientation = nib.orientations.io_orientation(affine)
    source = [0, 0, 0]
    flips = [False, False, False]
    for voxel_axis, (ras_axis, sign) in enumerate(orientation):
        source[int(ras_axis)] = voxel_axis
        flips[int(ras_axis)] = bool(sign < 0)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return DisplayGrid(
        source_axis=(source[0], source[1], source[2]),
        reversed=(flips[0], flips[1], flips[2]),
        spacing_mm=(float(norms[source[0]]), float(norms[source[1]]), float(norms[source[2]])),
        shape=(int(shape[source[0]]), int(shape[source[1]]), int(shape[source[2]])),
    )


def to_ras(volume: npt.NDArray[np.generic], grid: DisplayGrid) -> npt.NDArray[np.generic]:
    """``volume`` (stored grid, spatial axes first) as a view with axes R, A, S increasing."""
    ras = np.transpose(volume, (*grid.source_axis, *range(3, volume.ndim)))
    index = tuple(slice(None, None, -1) if flip else slice(None) for flip in grid.reversed)
    return ras[index]


def _in_plane_axes(plane: Plane) -> tuple[int, int]:
    """(row axis, column axis) in RAS of a display image of ``plane``."""
    normal = NORMAL_RAS_AXIS[plane]
    first, second = (axis for axis in range(3) if axis != normal)
    return second, first


def display_slice(
    ras_volume: npt.NDArray[np.generic], plane: Plane, ras_index: int
) -> npt.NDArray[np.generic]:
    """One slice of a RAS-ordered volume as a radiological 2D image (rows top to bottom).

    Rows run superior to inferior (anterior to posterior in axial); columns from the patient's
    right to left (anterior to posterior in sagittal).
    """
    # basic indexing: a view (np.take would copy the whole strided volume first)
    where: list[slice | int] = [slice(None)] * ras_volume.ndim
    where[NORMAL_RAS_AXIS[plane]] = ras_index
    plane_2d = ras_volume[tuple(where)]
    # plane_2d is (first in-plane axis, second); transposed the second runs down the rows
    return np.ascontiguousarray(np.swapaxes(plane_2d, 0, 1)[::-1, ::-1])
