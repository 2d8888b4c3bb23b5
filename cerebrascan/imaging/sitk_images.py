"""SimpleITK images of ``(x, y, z)`` numpy arrays and back, and the ITK settings around them.

CerebraScan's arrays are ``(x, y, z)`` with a voxel-to-RAS affine (nibabel's convention);
SimpleITK buffers are ``(z, y, x)`` and its space is LPS. :class:`Geometry` holds an array's
placement in SimpleITK's terms, :func:`to_sitk` and :func:`from_sitk` convert, and
:func:`downsample` makes the smoothed coarse copies registrations run on.

ITK's default thread count is process-wide, so :func:`itk_threads` serialises everything that
needs a fixed thread count (one thread: bit-reproducible registrations) behind one lock.
Maths only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)

from cerebrascan.imaging.geometry import spacing_from_affine

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
"""Flips x and y: RAS (nibabel) to LPS (ITK) coordinates, and back (it is its own inverse)."""
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_ITK_LOCK = threading.Lock()


@dataclass(frozen=True)
class Geometry:
    """Where an ``(x, y, z)`` voxel array lies in space, in SimpleITK's (LPS) terms.

    Attributes:
        spacing: voxel size in mm along the array axes x, y, z.
        origin: LPS position (mm) of voxel ``(0, 0, 0)``'s centre.
        direction: 3x3 direction cosines, row-major (SimpleITK's ``GetDirection()``): column
            ``i`` is the LPS direction of array axis ``i``.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY

    def __post_init__(self) -> None:
        spacing = tuple(float(v) for v in self.spacing)
        origin = tuple(float(v) for v in self.origin)
        direction = tuple(float(v) for v in self.direction)
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(f"spacing must be 3 finite voxel sizes > 0 mm, got {self.spacing!r}")
        if len(origin) != 3 or not all(math.isfinite(v) for v in origin):
            raise ValueError(f"origin must be 3 finite coordinates (mm), got {self.origin!r}")
        matrix = np.asarray(direction, dtype=np.float64)
        if (
            matrix.size != 9
            or not np.isfinite(matrix).all()
            or abs(np.linalg.det(matrix.reshape(3, 3))) < 1e-6
        ):
            raise ValueError(
                "direction must be 9 finite values of an invertible 3x3 matrix, "
                f"got {self.direction!r}"
            )
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @classmethod
    def from_affine(cls, affine: npt.ArrayLike) -> Geometry:
        """Geometry of a voxel-to-RAS affine (nibabel's ``img.affine``), converted to LPS.

        Raises:
            ValueError: ``affine`` is not a finite, invertible 4x4 matrix.
        """
        matrix = np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ValueError(f"affine must be a finite 4x4 matrix, got {matrix.tolist()!r}")
        spacing = np.asarray(spacing_from_affine(matrix), dtype=np.float64)
        if not (spacing > 0).all():
            raise ValueError(f"affine has a zero voxel size, got {matrix.tolist()!r}")
        direction = LPS_FROM_RAS @ (matrix[:3, :3] / spacing)
        origin = LPS_FROM_RAS @ matrix[:3, 3]
        return cls(
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            direction=tuple(float(v) for v in direction.ravel()),
        )

    @classmethod
    def from_image(cls, image: sitk.Image) -> Geometry:
        """Geometry of a 3D SimpleITK image.

        Raises:
            ValueError: ``image`` is not 3D.
        """
        if image.GetDimension() != 3:
            raise ValueError(f"image must be 3D, got {image.GetDimension()}D")
        sx, sy, sz = image.GetSpacing()
        ox, oy, oz = image.GetOrigin()
        return cls(spacing=(sx, sy, sz), origin=(ox, oy, oz), direction=image.GetDirection())

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))


def as_geometry(geometry: Geometry | npt.ArrayLike) -> Geometry:
    """A :class:`Geometry` from itself, a 4x4 voxel-to-RAS affine, or 3 voxel sizes (mm).

    Voxel sizes alone give an axis-aligned grid with its first voxel at the origin.

    Raises:
        ValueError: ``geometry`` is neither, or holds bad values (named in the message).
    """
    if isinstance(geometry, Geometry):
        return geometry
    values = np.asarray(geometry, dtype=np.float64)
    if values.shape == (4, 4):
        return Geometry.from_affine(values)
    if values.shape == (3,):
        return Geometry(spacing=(float(values[0]), float(values[1]), float(values[2])))
    raise ValueError(
        f"geometry must be a Geometry, a 4x4 affine or 3 voxel sizes, got shape {values.shape}"
    )


def to_sitk(array: npt.ArrayLike, geometry: Geometry | npt.ArrayLike) -> sitk.Image:
    """SimpleITK image of an ``(x, y, z)`` array placed by ``geometry`` (see :func:`as_geometry`).

    Args:
        array: ``(x, y, z)`` voxels; the image has their dtype.
        geometry: a :class:`Geometry`, a 4x4 voxel-to-RAS affine, or 3 voxel sizes (mm).

    Returns:
        The image, its buffer ``(z, y, x)`` and its space LPS.

    Raises:
        ValueError: ``array`` is not 3D, or ``geometry`` is bad.
    """
    grid = as_geometry(geometry)
    voxels = np.asarray(array)
    if voxels.ndim != 3:
        raise ValueError(f"array must be 3D (x, y, z), got shape {voxels.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(voxels, (2, 1, 0))))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def from_sitk(image: sitk.Image) -> npt.NDArray[Any]:
    """The ``(x, y, z)`` voxels of a 3D SimpleITK image (a contiguous copy)."""
    voxels: npt.NDArray[Any] = np.ascontiguousarray(
        np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    )
    return voxels


def downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Gaussian-smoothed float32 copy of ``image`` resampled to an isotropic ``spacing_mm`` grid.

    Args:
        image: a 3D image.
        spacing_mm: voxel size of the copy; an image already that coarse on every axis is
            returned as it is.

    Returns:
        The copy (same origin and direction; sigma ``(spacing_mm - spacing) / 2`` per axis,
        none along an axis already at least ``spacing_mm`` apart).
    """
    old_spacing = np.asarray(image.GetSpacing())
    if np.all(old_spacing >= spacing_mm - 1e-6):
        return image
    size = np.asarray(image.GetSize())
    new_size = [max(1, round(float(n))) for n in size * old_spacing / spacing_mm]
    sigma = [max(0.0, 0.5 * (spacing_mm - s)) for s in old_spacing]
    if all(s > 0 for s in sigma):
        smoothed = sitk.SmoothingRecursiveGaussian(image, sigma)
    else:
        # an axis already coarser than spacing_mm (thick slices) is not smoothed: ITK's
        # SmoothingRecursiveGaussian refuses a zero sigma, so smooth axis by axis
        smoothed = sitk.Cast(image, sitk.sitkFloat32)
        for axis, axis_sigma in enumerate(sigma):
            if axis_sigma > 0:
                axis_filter = sitk.RecursiveGaussianImageFilter()
                axis_filter.SetDirection(axis)
                axis_filter.SetSigma(axis_sigma)
                smoothed = axis_filter.Execute(smoothed)
    return sitk.Resample(
        smoothed,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [spacing_mm] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def single_transform(transform: sitk.Transform) -> sitk.Transform:
    """The one transform inside a composite of one (what a registration returns), else itself."""
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        inner: sitk.Transform = transform.GetNthTransform(0)
        return inner
    return transform


@contextmanager
def itk_threads(threads: int) -> Iterator[None]:
    """Run the block alone with ITK's process-wide default thread count set to ``threads``.

    Registrations hold this for their whole run: ITK's metrics sum per-thread histograms, so
    only a fixed thread count (1: bit-identical) makes a run reproducible, and the setting is
    global, so two callers must not interleave. The previous count is restored on exit.

    Args:
        threads: ITK threads inside the block.

    Raises:
        ValueError: ``threads`` is below 1.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    with _ITK_LOCK:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
