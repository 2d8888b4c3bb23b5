"""Rigid co-registration of two series of one patient onto one grid (maths only, no file I/O).

Series of one study come on different grids (slice thickness, field of view, orientation).
When they share a frame of reference, :func:`resample_onto` puts one on the other's grid by
geometry alone; when they do not (or when asked), :func:`register_rigid` first finds the rigid
motion between them with SimpleITK: a 6-parameter Euler transform initialised by the images'
centres of mass, Mattes mutual information (any pair of contrasts), regular-step gradient
descent over three levels of 2 mm copies (shrink 4, 2, 1), a fixed-seed random sample of 2 % of
the voxels and one ITK thread (:func:`cerebrascan.imaging.sitk_images.itk_threads`), so a run is
reproducible. The building blocks (conversion, coarse copies, thread lock) are those of
:mod:`cerebrascan.imaging.sitk_images`, shared with the atlas and visit registrations.

The residual (:attr:`RigidRegistration.residual_mm`) is measured, not assumed: the registration
is run a second time the other way round (fixed and moving swapped), and the residual is the
mean distance by which points of the fixed image's foreground surface miss themselves after
the forward transform followed by the independently found backward one (inverse consistency).
A registration stuck in a wrong optimum in either direction shows as a large residual; a good
one gives a fraction of a millimetre. It bounds consistency, not accuracy against a truth the
service does not have: two registrations wrong in the same way would agree.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)
from scipy import ndimage

from cerebrascan.imaging.sitk_images import (
    downsample,
    from_sitk,
    itk_threads,
    single_transform,
    to_sitk,
)

logger = logging.getLogger(__name__)

COREGISTRATION_SEED = 20261205
"""Fixed seed of the metric's random sampling: a registration is reproducible."""
_LPS_RAS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])
_MAX_SURFACE_POINTS = 20_000
_MAX_ITERATIONS = 150
_MIN_STEP = 1e-3
_LEARNING_RATE = 4.0
"""First step (mm of physical shift): large enough to cross a centre-of-mass misplacement of
a few centimetres (cropped fields of view) within the iterations."""
_RELAXATION = 0.5


@dataclass(frozen=True)
class RigidRegistration:
    """The moving series on the fixed grid, the rigid motion found, and how well it holds.

    Attributes:
        resampled: float32 moving image on the fixed grid (linear; 0 outside the moving FOV).
        transform: 4x4 matrix mapping a fixed-image RAS point (mm) to the same anatomy in the
            moving image's RAS space (what the resampling applied).
        rotation_deg: angle of the transform's rotation.
        translation_mm: displacement (mm) of the fixed grid's centre by the transform.
        residual_mm: inverse-consistency residual (module docstring): mean distance (mm) of
            fixed foreground-surface points from themselves after forward then backward
            transform.
        metric: final Mattes mutual information of the forward run (negative; lower is better).
        iterations: optimiser iterations (last level) of the forward and backward runs.
        duration_s: wall time of both runs and the resampling.
    """

    resampled: npt.NDArray[np.float32]
    transform: npt.NDArray[np.float64]
    rotation_deg: float
    translation_mm: float
    residual_mm: float
    metric: float
    iterations: tuple[int, int]
    duration_s: float


def _check_volume(
    name: str, image: npt.NDArray[Any], affine: npt.NDArray[Any], *, needs_contrast: bool = True
) -> None:
    if np.ndim(image) != 3 or min(np.shape(image)) < 2:
        raise ValueError(f"{name} must be a 3D volume, got shape {np.shape(image)}")
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"{name}_affine must be a finite 4x4 matrix, got {matrix.tolist()!r}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise ValueError(f"{name}_affine is singular: {matrix.tolist()!r}")
    values = np.asarray(image)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite voxels")
    if needs_contrast and not float(values.max()) > float(values.min()):
        raise ValueError(f"{name} is constant ({float(values.min())}); nothing to register")


def register_rigid(
    fixed: npt.NDArray[Any],
    fixed_affine: npt.NDArray[Any],
    moving: npt.NDArray[Any],
    moving_affine: npt.NDArray[Any],
    *,
    spacing_mm: float = 2.0,
    sampling_fraction: float = 0.02,
    seed: int = COREGISTRATION_SEED,
) -> RigidRegistration:
    """Rigidly register ``moving`` to ``fixed`` and resample it onto the fixed grid.

    Args:
        fixed: ``(x, y, z)`` reference series (e.g. t1c).
        fixed_affine: its 4x4 voxel-to-RAS affine (mm).
        moving: ``(x, y, z)`` series to bring onto the reference grid (any contrast).
        moving_affine: its affine.
        spacing_mm: voxel size of the registration copies.
        sampling_fraction: fraction of the copies' voxels the metric samples.
        seed: seed of that sampling.

    Returns:
        The resampled series, the transform and its measured residual.

    Raises:
        ValueError: a non-3D, constant or non-finite image, a singular affine, or bad
            ``spacing_mm`` / ``sampling_fraction`` (the message names it).
    """
    _check_volume("fixed", fixed, fixed_affine)
    _check_volume("moving", moving, moving_affine)
    if not 0.5 <= spacing_mm <= 8.0:
        raise ValueError(f"spacing_mm must be in [0.5, 8] mm, got {spacing_mm}")
    if not 0.0 < sampling_fraction <= 1.0:
        raise ValueError(f"sampling_fraction must be in (0, 1], got {sampling_fraction}")
    start = time.perf_counter()
    fixed_image = to_sitk(np.asarray(fixed, dtype=np.float32), fixed_affine)
    moving_image = to_sitk(np.asarray(moving, dtype=np.float32), moving_affine)
    # smoothing and resampling give the same voxels with any thread count; only the metric
    # (per-thread histograms) needs the one-thread lock
    fixed_copy = downsample(fixed_image, spacing_mm)
    moving_copy = downsample(moving_image, spacing_mm)
    with itk_threads(1):
        forward, forward_iterations, metric = _rigid_stage(
            fixed_copy, moving_copy, seed, sampling_fraction
        )
        backward, backward_iterations, _ = _rigid_stage(
            moving_copy, fixed_copy, seed, sampling_fraction
        )
    resampled = sitk.Resample(
        moving_image, fixed_image, forward, sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    forward_lps = _matrix_lps(forward)
    backward_lps = _matrix_lps(backward)
    surface = _surface_points_lps(fixed_copy)
    round_trip = _apply(backward_lps @ forward_lps, surface)
    residual = float(np.linalg.norm(round_trip - surface, axis=1).mean())
    transform = _LPS_RAS_4 @ forward_lps @ _LPS_RAS_4
    rotation = transform[:3, :3]
    angle = math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
    centre = np.asarray(fixed_affine, dtype=np.float64) @ np.append(
        (np.asarray(np.shape(fixed), dtype=np.float64) - 1.0) / 2.0, 1.0
    )
    shift = float(np.linalg.norm((transform @ centre)[:3] - centre[:3]))
    result = RigidRegistration(
        resampled=from_sitk(resampled).astype(np.float32, copy=False),
        transform=transform,
        rotation_deg=angle,
        translation_mm=shift,
        residual_mm=residual,
        metric=metric,
        iterations=(forward_iterations, backward_iterations),
        duration_s=time.perf_counter() - start,
    )
    logger.info(
        "rigid co-registration: rotation %.2f deg, shift %.2f mm, residual %.2f mm, MI %.4f, "
        "%d + %d iterations, %.1f s",
        angle,
        shift,
        residual,
        metric,
        forward_iterations,
        backward_iterations,
        result.duration_s,
    )
    return result


def resample_onto(
    fixed_shape: tuple[int, int, int],
    fixed_affine: npt.NDArray[Any],
    moving: npt.NDArray[Any],
    moving_affine: npt.NDArray[Any],
    transform: npt.NDArray[np.float64] | None = None,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
) -> npt.NDArray[np.float32]:
    """``moving`` on the fixed grid by geometry (and ``transform``, if given), float32.

    Args:
        fixed_shape: the target grid's shape.
        fixed_affine: its 4x4 voxel-to-RAS affine.
        moving: ``(x, y, z)`` image.
        moving_affine: its affine (same frame of reference as ``fixed_affine``).
        transform: 4x4 RAS matrix fixed point -> moving point (:attr:`RigidRegistration.transform`);
            None: identity (the two grids share a frame of reference).
        interpolation: ``linear`` (images, probabilities) or ``nearest`` (label maps).

    Returns:
        float32 array of ``fixed_shape``; 0 outside the moving field of view.
    """
    _check_volume("moving", moving, moving_affine, needs_contrast=False)
    reference = to_sitk(np.zeros(fixed_shape, dtype=np.uint8), fixed_affine)
    sitk_transform = sitk.Transform()
    if transform is not None:
        lps = _LPS_RAS_4 @ np.asarray(transform, dtype=np.float64) @ _LPS_RAS_4
        affine_transform = sitk.AffineTransform(3)
        affine_transform.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
        affine_transform.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
        sitk_transform = affine_transform
    image = to_sitk(np.asarray(moving, dtype=np.float32), moving_affine)
    interpolator = sitk.sitkNearestNeighbor if interpolation == "nearest" else sitk.sitkLinear
    resampled = sitk.Resample(image, reference, sitk_transform, interpolator, 0.0, sitk.sitkFloat32)
    result: npt.NDArray[np.float32] = from_sitk(resampled).astype(np.float32, copy=False)
    return result


def _rigid_stage(
    fixed: sitk.Image, moving: sitk.Image, seed: int, sampling_fraction: float
) -> tuple[sitk.Transform, int, float]:
    """Euler transform (fixed LPS point -> moving LPS point), iterations, final metric."""
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(1)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=_LEARNING_RATE,
        minStep=_MIN_STEP,
        numberOfIterations=_MAX_ITERATIONS,
        gradientMagnitudeTolerance=1e-8,
        relaxationFactor=_RELAXATION,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    transform = sitk.Euler3DTransform(single_transform(method.Execute(fixed, moving)))
    logger.debug("rigid stage stopped: %s", method.GetOptimizerStopConditionDescription())
    return transform, int(method.GetOptimizerIteration()), float(method.GetMetricValue())


def _matrix_lps(transform: sitk.Transform) -> npt.NDArray[np.float64]:
    """4x4 LPS matrix of an Euler transform: ``R (p - c) + c + t``."""
    euler = sitk.Euler3DTransform(transform)
    rotation = np.asarray(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(euler.GetCenter(), dtype=np.float64)
    translation = np.asarray(euler.GetTranslation(), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + translation - rotation @ centre
    return matrix


def _apply(matrix: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    moved: npt.NDArray[Any] = points @ matrix[:3, :3].T + matrix[:3, 3]
    return moved


def _surface_points_lps(image: sitk.Image) -> npt.NDArray[np.float64]:
    """LPS points (mm) of the boundary of the image's Otsu foreground (at most 20 000, evenly)."""
    voxels = from_sitk(image).astype(np.float32, copy=False)
    foreground = from_sitk(sitk.OtsuThreshold(image, 0, 1)).astype(bool)
    if not foreground.any() or foreground.all():
        foreground = voxels > voxels.mean()
    boundary = foreground & ~ndimage.binary_erosion(foreground)
    index = np.argwhere(boundary).astype(np.float64)
    if index.shape[0] == 0:
        index = np.argwhere(np.ones_like(foreground)).astype(np.float64)
    step = max(1, index.shape[0] // _MAX_SURFACE_POINTS)
    index = index[::step]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    points: npt.NDArray[np.float64] = origin + (index * spacing) @ direction.T
    return points
