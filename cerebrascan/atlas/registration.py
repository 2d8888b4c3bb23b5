"""Register the SRI24 atlas to a study and carry its structure masks across (maths only).

:func:`register_atlas_to_image` registers the atlas T1 (moving) to the study ``t1n`` (fixed)
with SimpleITK: centred moments initialisation, rigid (Euler) then affine, Mattes mutual
information, three resolution levels, random sampling with a fixed seed. ITK's metric sums
per-thread histograms, so only a single thread (the default) gives bit-identical transforms run
after run; more threads are faster but differ in the ~6th significant digit.

:func:`warp_packed_masks` then resamples the packed structure masks
(:func:`cerebrascan.atlas.structures.pack_structure_masks`) onto the study grid in one
nearest-neighbour pass. The atlas arrays come in as arguments (read by
:mod:`cerebrascan.atlas.files`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)

from cerebrascan.atlas.alignment import ANALYSIS_STRIDE, normalised_correlation, validate_grid
from cerebrascan.imaging.sitk_images import (
    downsample,
    from_sitk,
    itk_threads,
    single_transform,
    to_sitk,
)

logger = logging.getLogger(__name__)

#: Fixed seed of the metric's random sampling: registration is deterministic.
REGISTRATION_SEED = 20240917
_REGISTRATION_SPACING_MM = 2.0


@dataclass(frozen=True)
class RegistrationOutcome:
    """What a registration did.

    Attributes:
        transform: SimpleITK transform mapping study (fixed) physical points to atlas points.
        metric: final Mattes mutual information (negative; lower is better).
        ncc_after: NCC of the resampled atlas T1 and the study t1n inside the study brain.
        duration_s: wall time of the registration and the mask resampling.
        iterations: optimiser iterations of the rigid and affine stages.
    """

    transform: Any
    metric: float
    ncc_after: float
    duration_s: float
    iterations: tuple[int, int]


def register_atlas_to_image(
    t1n: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    atlas_t1: npt.NDArray[np.float32],
    atlas_affine: npt.NDArray[np.float64],
    *,
    seed: int = REGISTRATION_SEED,
    threads: int = 1,
    sampling_fraction: float = 0.02,
) -> RegistrationOutcome:
    """Register the SRI24 T1 (moving) to a study's t1n (fixed): rigid, then affine.

    Both stages use Mattes mutual information (32 bins) with random sampling of
    ``sampling_fraction`` of the voxels (fixed ``seed``), regular-step gradient descent with
    physical-shift scaling, and three levels (shrink 4, 2, 1 of 2 mm copies of the images,
    smoothing 2, 1, 0 voxels). The images are first resampled to 2 mm, which is plenty for a
    12-parameter transform and keeps a run within seconds.

    Args:
        t1n: study T1 ``(x, y, z)``, 0 outside the brain.
        affine: the study's 4x4 voxel-to-RAS affine.
        atlas_t1: the SRI24 T1 (:func:`cerebrascan.atlas.files.load_sri24_t1`).
        atlas_affine: its affine.
        seed: seed of the metric sampling.
        threads: ITK threads during the registration (1: bit-reproducible; registrations
            are serialised because ITK's default thread count is process-wide).
        sampling_fraction: fraction of voxels sampled by the metric at each level.

    Returns:
        The transform and how the registration went.

    Raises:
        ValueError: for a non-3D image, a singular affine, an empty t1n or bad settings.
    """
    validate_grid(t1n, affine)
    if not np.any(t1n > 0):
        raise ValueError("t1n has no positive voxel; cannot register the atlas to it")
    if not 0.0 < sampling_fraction <= 1.0 or threads < 1:
        raise ValueError(
            f"sampling_fraction must be in (0, 1] and threads >= 1, got {sampling_fraction} "
            f"and {threads}"
        )
    with itk_threads(threads):
        return _register(t1n, affine, atlas_t1, atlas_affine, seed, threads, sampling_fraction)


def _register(
    t1n: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    atlas_t1: npt.NDArray[np.float32],
    atlas_affine: npt.NDArray[np.float64],
    seed: int,
    threads: int,
    sampling_fraction: float,
) -> RegistrationOutcome:
    start = time.perf_counter()
    fixed = downsample(to_sitk(np.asarray(t1n, dtype=np.float32), affine), _REGISTRATION_SPACING_MM)
    moving = downsample(to_sitk(atlas_t1, atlas_affine), _REGISTRATION_SPACING_MM)

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    rigid, rigid_iterations, _ = _run_stage(
        fixed, moving, initial, seed, threads, sampling_fraction, learning_rate=2.0
    )
    rigid = sitk.Euler3DTransform(rigid)
    affine_transform = sitk.AffineTransform(3)
    affine_transform.SetCenter(rigid.GetCenter())
    affine_transform.SetMatrix(rigid.GetMatrix())
    affine_transform.SetTranslation(rigid.GetTranslation())
    final, affine_iterations, metric = _run_stage(
        fixed, moving, affine_transform, seed, threads, sampling_fraction, learning_rate=1.0
    )
    final = sitk.AffineTransform(final)

    full_fixed = to_sitk(np.asarray(t1n, dtype=np.float32), affine)
    warped = sitk.Resample(
        to_sitk(atlas_t1, atlas_affine), full_fixed, final, sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    step = slice(None, None, ANALYSIS_STRIDE)
    warped_t1 = from_sitk(warped)[step, step, step]
    study = np.asarray(t1n[step, step, step], dtype=np.float32)
    ncc_after = normalised_correlation(warped_t1, study, (study > 0) | (warped_t1 > 0))
    duration = time.perf_counter() - start
    logger.info(
        "registered SRI24 to study: MI %.4f, NCC %.3f, %d + %d iterations, %.1f s",
        metric,
        ncc_after,
        rigid_iterations,
        affine_iterations,
        duration,
    )
    return RegistrationOutcome(
        transform=final,
        metric=metric,
        ncc_after=ncc_after,
        duration_s=duration,
        iterations=(rigid_iterations, affine_iterations),
    )


def _run_stage(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform,
    seed: int,
    threads: int,
    sampling_fraction: float,
    learning_rate: float,
) -> tuple[Any, int, float]:
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=1e-3,
        numberOfIterations=150,
        gradientMagnitudeTolerance=1e-6,
        relaxationFactor=0.6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    transform = single_transform(method.Execute(fixed, moving))
    return transform, int(method.GetOptimizerIteration()), float(method.GetMetricValue())


def warp_packed_masks(
    packed: npt.NDArray[np.uint16],
    atlas_affine: npt.NDArray[np.float64],
    shape: tuple[int, ...],
    affine: npt.NDArray[Any],
    transform: Any,
) -> npt.NDArray[np.uint16]:
    """Packed atlas masks resampled onto a study grid through a registration's transform.

    Args:
        packed: structure masks as bits of one ``uint16`` volume on the atlas grid.
        atlas_affine: the atlas affine.
        shape: the study grid's shape.
        affine: the study's 4x4 voxel-to-RAS affine.
        transform: :attr:`RegistrationOutcome.transform` (study points to atlas points).

    Returns:
        ``uint16`` volume of ``shape`` (nearest neighbour, so bits stay whole; 0 outside the
        atlas grid).
    """
    resampled = sitk.Resample(
        to_sitk(packed, atlas_affine),
        to_sitk(np.zeros(shape, dtype=np.uint8), affine),
        transform,
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt16,
    )
    warped: npt.NDArray[np.uint16] = from_sitk(resampled).astype(np.uint16, copy=False)
    return warped
