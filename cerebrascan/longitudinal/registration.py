"""Rigid registration of a patient's earlier visit onto the current one (maths only).

Heads lie differently in the scanner at each visit, so a prior label map is only comparable
voxel by voxel after registration. :func:`register_visits` registers the prior's image
(moving) to the current image (fixed) with SimpleITK: a 6-parameter rigid (Euler) transform,
initialised by the images' centres of mass, Mattes mutual information (works across scanner
intensity scales), regular-step gradient descent over two resolution levels of copies of both
images resampled to ``spacing_mm`` (2 mm by default). The tumour (dilated) is left out of the
metric in both images, because it changes between visits; the rest of the head does not.
The metric samples a fixed-seed random subset of voxels with one ITK thread (registrations are
serialised by :func:`cerebrascan.imaging.sitk_images.itk_threads`), so a run is reproducible.

:func:`resample_labels` then maps the prior's labels onto the current grid (nearest
neighbour) through the found transform.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)
from scipy import ndimage

from cerebrascan.imaging.sitk_images import downsample, itk_threads, single_transform, to_sitk
from cerebrascan.longitudinal.response import near_mask

logger = logging.getLogger(__name__)

REGISTRATION_SEED = 20251127
TUMOUR_EXCLUSION_MM = 5.0
"""The tumour, dilated by this much, is left out of the similarity metric."""
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class VisitRegistration:
    """The rigid transform between two visits and how it was found.

    Attributes:
        current_to_prior_ras: 4x4 matrix mapping a current-visit RAS point (mm) to the same
            anatomy in the prior visit's RAS space.
        rotation_deg: rotation angle of the transform.
        translation_mm: length of the displacement of the current image's centre.
        metric: final Mattes mutual information (negative; lower is better).
        iterations: optimiser iterations at the last level.
        duration_s: wall time.
    """

    current_to_prior_ras: npt.NDArray[np.float64]
    rotation_deg: float
    translation_mm: float
    metric: float
    iterations: int
    duration_s: float


def _mask_image(
    mask: npt.NDArray[np.bool_], affine: npt.NDArray[Any], reference: sitk.Image
) -> sitk.Image:
    """``mask`` as a uint8 SimpleITK image on the grid of ``reference`` (nearest neighbour)."""
    image = to_sitk(mask.astype(np.uint8), affine)
    return sitk.Resample(
        image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )


def metric_mask(
    image: npt.NDArray[Any], tumour: npt.NDArray[np.bool_], spacing_mm: tuple[float, ...]
) -> npt.NDArray[np.bool_]:
    """Head voxels (``image > 0``) away from the tumour: where the metric is evaluated."""
    head = np.asarray(image) > 0
    if not tumour.any():
        return head
    mask: npt.NDArray[np.bool_] = head & ~near_mask(tumour, spacing_mm, TUMOUR_EXCLUSION_MM)
    return mask


def register_visits(
    current_image: npt.NDArray[Any],
    current_affine: npt.NDArray[Any],
    prior_image: npt.NDArray[Any],
    prior_affine: npt.NDArray[Any],
    *,
    current_mask: npt.NDArray[np.bool_] | None = None,
    prior_mask: npt.NDArray[np.bool_] | None = None,
    spacing_mm: float = 2.0,
    seed: int = REGISTRATION_SEED,
) -> VisitRegistration:
    """Rigidly register a prior visit's image (moving) to the current one (fixed).

    Args:
        current_image: ``(x, y, z)`` current image, 0 outside the head.
        current_affine: its 4x4 voxel-to-RAS affine.
        prior_image: ``(x, y, z)`` prior image (any intensity scale), 0 outside the head.
        prior_affine: its affine.
        current_mask: voxels of the current image the metric uses (default: ``> 0``).
        prior_mask: voxels of the prior image the metric uses (default: ``> 0``).
        spacing_mm: grid of the registration copies.
        seed: seed of the metric's random sampling.

    Returns:
        The transform (current RAS -> prior RAS) and how the registration went.

    Raises:
        ValueError: a non-3D or empty image, or a mask of another shape.
    """
    for name, image, mask in (
        ("current", current_image, current_mask),
        ("prior", prior_image, prior_mask),
    ):
        if np.ndim(image) != 3 or not np.any(np.asarray(image) > 0):
            raise ValueError(f"{name} image must be a 3D volume with positive voxels")
        if mask is not None and mask.shape != np.shape(image):
            raise ValueError(f"{name} mask {mask.shape} differs from its image {np.shape(image)}")
    with itk_threads(1):
        return _register(
            current_image,
            current_affine,
            prior_image,
            prior_affine,
            current_mask,
            prior_mask,
            spacing_mm,
            seed,
        )


def _register(
    current_image: npt.NDArray[Any],
    current_affine: npt.NDArray[Any],
    prior_image: npt.NDArray[Any],
    prior_affine: npt.NDArray[Any],
    current_mask: npt.NDArray[np.bool_] | None,
    prior_mask: npt.NDArray[np.bool_] | None,
    spacing_mm: float,
    seed: int,
) -> VisitRegistration:
    start = time.perf_counter()
    fixed = downsample(
        to_sitk(np.asarray(current_image, dtype=np.float32), current_affine), spacing_mm
    )
    moving = downsample(
        to_sitk(np.asarray(prior_image, dtype=np.float32), prior_affine), spacing_mm
    )
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(1)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    fixed_mask = current_mask if current_mask is not None else np.asarray(current_image) > 0
    moving_mask = prior_mask if prior_mask is not None else np.asarray(prior_image) > 0
    method.SetMetricFixedMask(_mask_image(fixed_mask, current_affine, fixed))
    method.SetMetricMovingMask(_mask_image(moving_mask, prior_affine, moving))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=300,
        gradientMagnitudeTolerance=1e-8,
        relaxationFactor=0.6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    transform = single_transform(method.Execute(fixed, moving))
    euler = sitk.Euler3DTransform(transform)
    rotation = np.asarray(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(euler.GetCenter(), dtype=np.float64)
    translation = np.asarray(euler.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = rotation
    lps[:3, 3] = centre + translation - rotation @ centre
    ras = _RAS_FROM_LPS @ lps @ _RAS_FROM_LPS
    angle = math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
    image_centre = np.asarray(current_affine, dtype=np.float64) @ np.append(
        (np.asarray(np.shape(current_image)) - 1) / 2.0, 1.0
    )
    shift = float(np.linalg.norm((ras @ image_centre)[:3] - image_centre[:3]))
    duration = time.perf_counter() - start
    result = VisitRegistration(
        current_to_prior_ras=ras,
        rotation_deg=angle,
        translation_mm=shift,
        metric=float(method.GetMetricValue()),
        iterations=int(method.GetOptimizerIteration()),
        duration_s=duration,
    )
    logger.info(
        "registered prior visit: rotation %.2f deg, shift %.2f mm, MI %.4f, %d iterations, %.1f s",
        angle,
        shift,
        result.metric,
        result.iterations,
        duration,
    )
    return result


def resample_labels(
    prior_labels: npt.NDArray[np.uint8],
    prior_affine: npt.NDArray[Any],
    current_to_prior_ras: npt.NDArray[np.float64],
    current_affine: npt.NDArray[Any],
    current_shape: tuple[int, int, int],
) -> npt.NDArray[np.uint8]:
    """The prior's labels on the current grid (nearest neighbour; 0 outside the prior grid)."""
    voxel_map = (
        np.linalg.inv(np.asarray(prior_affine, dtype=np.float64))
        @ current_to_prior_ras
        @ np.asarray(current_affine, dtype=np.float64)
    )
    resampled: npt.NDArray[np.uint8] = ndimage.affine_transform(
        np.asarray(prior_labels, dtype=np.uint8),
        voxel_map[:3, :3],
        offset=voxel_map[:3, 3],
        output_shape=tuple(current_shape),
        order=0,
        mode="constant",
        cval=0,
        output=np.uint8,
    )
    return resampled
