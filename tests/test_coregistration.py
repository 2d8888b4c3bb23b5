"""Rigid co-registration (cerebrascan.imaging.coregistration) on the whole-head SRI24 phantom.

Moving series are made with scipy (an independent resampler) from a known rigid motion, on
other grids: thick slices, permuted and reversed axes, a cropped field of view, an oblique grid
and another contrast. Each registration runs forward and backward (the residual), ~2-5 s.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cerebrascan.imaging.coregistration import register_rigid, resample_onto
from tests.whole_head import whole_head


def rigid(
    angles_deg: tuple[float, float, float], shift_mm: tuple[float, float, float]
) -> npt.NDArray[np.float64]:
    """4x4 RAS rigid motion about the head's centre (fixed point -> moving point)."""
    _, affine, _ = whole_head()
    centre = (affine @ np.array([119.5, 119.5, 77.0, 1.0]))[:3]
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    matrix[:3, 3] = centre + np.asarray(shift_mm) - matrix[:3, :3] @ centre
    return matrix


def grid_around_head(
    axes: npt.NDArray[np.float64],
    shape: tuple[int, int, int],
    offset_mm: tuple[float, float, float],
) -> npt.NDArray[np.float64]:
    """Affine whose columns are ``axes`` (spacing included), centred on the head plus an offset."""
    _, affine, _ = whole_head()
    centre = (affine @ np.array([119.5, 119.5, 77.0, 1.0]))[:3] + np.asarray(offset_mm)
    result = np.eye(4)
    result[:3, :3] = axes
    result[:3, 3] = centre - axes @ ((np.asarray(shape) - 1) / 2.0)
    return result


def moved_series(
    image: npt.NDArray[np.float32],
    affine: npt.NDArray[np.float64],
    motion: npt.NDArray[np.float64],
    shape: tuple[int, int, int],
    series_affine: npt.NDArray[np.float64],
) -> npt.NDArray[np.float32]:
    """``image`` moved by ``motion`` (the anatomy at fixed point p lies at ``motion @ p``), sampled
    on another grid by scipy (trilinear)."""
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(motion) @ series_affine
    moved: npt.NDArray[np.float32] = ndimage.affine_transform(
        image, voxel_map[:3, :3], offset=voxel_map[:3, 3], output_shape=shape, order=1
    )
    return moved


def errors(found: npt.NDArray[np.float64], truth: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Rotation error (degrees) and mean displacement error (mm) over the brain's voxels."""
    _, affine, brain = whole_head()
    difference = np.linalg.inv(truth) @ found
    angle = math.degrees(math.acos(np.clip((np.trace(difference[:3, :3]) - 1) / 2, -1, 1)))
    index = np.argwhere(brain)[::97].astype(np.float64)
    points = np.c_[index, np.ones(len(index))] @ affine.T
    displacement = np.linalg.norm((points @ difference.T - points)[:, :3], axis=1).mean()
    return angle, float(displacement)


@pytest.fixture(scope="module")
def thick_slice_case() -> dict:
    """Same contrast, 1.2 x 1.2 x 3 mm, axes permuted (S, L, A), cropped, rotated 5 deg + 6 mm."""
    head, affine, _ = whole_head()
    motion = rigid((4.0, -3.0, 5.0), (3.0, -4.0, 2.5))
    axes = np.array([[0.0, -1.2, 0.0], [0.0, 0.0, 1.2], [3.0, 0.0, 0.0]])
    shape = (55, 170, 200)
    series_affine = grid_around_head(axes, shape, (5.0, -8.0, 10.0))
    moving = moved_series(head, affine, motion, shape, series_affine)
    registration = register_rigid(head, affine, moving, series_affine)
    return {"motion": motion, "registration": registration, "moving": moving}


def test_known_motion_is_recovered_across_grids(thick_slice_case: dict) -> None:
    head, _, brain = whole_head()
    registration = thick_slice_case["registration"]
    angle, displacement = errors(registration.transform, thick_slice_case["motion"])
    assert angle < 1.0 and displacement < 1.0
    true_angle = math.degrees(math.acos((np.trace(thick_slice_case["motion"][:3, :3]) - 1) / 2))
    assert registration.rotation_deg == pytest.approx(true_angle, abs=1.0)
    assert 0.0 <= registration.residual_mm < 1.0
    # the moving series is back on the fixed grid: the head lines up with itself
    resampled = registration.resampled
    assert resampled.dtype == np.float32 and resampled.shape == head.shape
    inside = brain & (resampled > 0)
    assert inside.sum() > 0.9 * brain.sum()
    assert np.corrcoef(resampled[inside], head[inside])[0, 1] > 0.95


def test_other_contrast_on_an_oblique_grid() -> None:
    head, affine, _ = whole_head()
    # a T2-like inversion of the head's intensities (bright fluid, dark white matter)
    tissue = head > 0
    other = np.where(tissue, head.max() - head, 0.0).astype(np.float32)
    motion = rigid((-6.0, 2.0, -4.0), (-5.0, 3.0, -2.0))
    oblique = Rotation.from_euler("xyz", (12.0, 0.0, 20.0), degrees=True).as_matrix()
    axes = oblique @ np.diag([1.5, 1.5, 2.0])
    shape = (150, 150, 100)
    series_affine = grid_around_head(axes, shape, (0.0, 0.0, 0.0))
    moving = moved_series(other, affine, motion, shape, series_affine)
    registration = register_rigid(head, affine, moving, series_affine)
    angle, displacement = errors(registration.transform, motion)
    assert angle < 1.0 and displacement < 1.0
    assert registration.residual_mm < 1.0


def test_residual_shows_a_failed_registration(thick_slice_case: dict) -> None:
    # the moving series against an unrelated fixed image (the head upside down and shifted):
    # the two directions find different optima and the residual says so
    head, affine, _ = whole_head()
    upside_down = np.ascontiguousarray(head[:, ::-1, ::-1])
    registration = register_rigid(
        upside_down,
        affine,
        thick_slice_case["moving"],
        grid_around_head(
            np.array([[0.0, -1.2, 0.0], [0.0, 0.0, 1.2], [3.0, 0.0, 0.0]]),
            (55, 170, 200),
            (5.0, -8.0, 10.0),
        ),
    )
    good = thick_slice_case["registration"].residual_mm
    assert registration.residual_mm > 2.0
    assert registration.residual_mm > 5 * good


def test_resample_onto_a_shared_frame_of_reference() -> None:
    head, affine, brain = whole_head()
    axes = np.diag([-1.3, 1.1, 2.5])
    shape = (150, 190, 60)
    series_affine = grid_around_head(axes, shape, (0.0, 0.0, 0.0))
    series = moved_series(head, affine, np.eye(4), shape, series_affine)
    back = resample_onto(head.shape, affine, series, series_affine)
    inside = brain & (back > 0)
    assert back.dtype == np.float32 and back.shape == head.shape
    assert np.corrcoef(back[inside], head[inside])[0, 1] > 0.97
    # with a transform: the motion's inverse applied by the resampler undoes the motion
    motion = rigid((0.0, 0.0, 10.0), (4.0, 0.0, 0.0))
    moved = moved_series(head, affine, motion, head.shape, affine)
    undone = resample_onto(head.shape, affine, moved, affine, transform=motion)
    inside = brain & (undone > 0)
    assert np.corrcoef(undone[inside], head[inside])[0, 1] > 0.97


@pytest.mark.parametrize(
    ("fixed", "affine", "message"),
    [
        (np.zeros((10, 10)), np.eye(4), "fixed must be a 3D volume"),
        (np.ones((10, 10, 10)), np.eye(4), "fixed is constant"),
        (np.arange(1000.0).reshape(10, 10, 10), np.zeros((4, 4)), "fixed_affine is singular"),
        (np.full((10, 10, 10), np.nan), np.eye(4), "fixed holds NaN"),
    ],
)
def test_bad_input_is_named(fixed: np.ndarray, affine: np.ndarray, message: str) -> None:
    moving = np.arange(1000.0).reshape(10, 10, 10)
    with pytest.raises(ValueError, match=message):
        register_rigid(fixed, affine, moving, np.eye(4))
