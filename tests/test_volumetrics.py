"""The built-in volumetrics analyzer on analytic shapes drawn on anisotropic grids."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from plugins.builtin.volumetrics import (
    axial_axis,
    hemisphere,
    max_pairwise_distance,
    measure,
    surface_area_mm2,
)
from plugins.host import AnalyzerHost
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink, study_inputs

SPACING = (1.0, 1.0, 1.5)


def ellipsoid(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    semi_axes_mm: tuple[float, float, float],
    centre: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Voxels whose centres lie inside an axis-aligned ellipsoid (mm along the array axes)."""
    middle = tuple(float(n // 2) for n in shape) if centre is None else centre
    grid = np.indices(shape, dtype=np.float64)
    total = sum(((grid[a] - middle[a]) * spacing[a] / semi_axes_mm[a]) ** 2 for a in range(3))
    return np.asarray(total <= 1.0)


def grid_for(radius_mm: float, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    x, y, z = (int(2 * radius_mm / s) + 8 for s in spacing)
    return (x, y, z)


def test_volumes_are_exact_to_the_voxel_and_close_to_the_analytic_sphere() -> None:
    spacing = (1.0, 1.5, 2.0)
    shape = grid_for(15, spacing)
    outer = ellipsoid(shape, spacing, (15, 15, 15))
    core = ellipsoid(shape, spacing, (9, 9, 9))
    centre = ellipsoid(shape, spacing, (5, 5, 5))
    labels = np.where(outer, 2, 0).astype(np.uint8)
    labels[core] = 3
    labels[centre] = 1
    voxel_ml = 1.0 * 1.5 * 2.0 / 1000
    result = measure(labels, np.diag([*spacing, 1.0]), spacing)
    volumes = result.volumes_ml
    assert volumes.NETC == pytest.approx(centre.sum() * voxel_ml, rel=1e-12)
    assert volumes.ET == pytest.approx((core & ~centre).sum() * voxel_ml, rel=1e-12)
    assert volumes.SNFH == pytest.approx((outer & ~core).sum() * voxel_ml, rel=1e-12)
    assert volumes.TC == pytest.approx(core.sum() * voxel_ml, rel=1e-12)
    assert volumes.WT == pytest.approx(outer.sum() * voxel_ml, rel=1e-12)
    assert volumes.WT == pytest.approx(4 / 3 * math.pi * 15**3 / 1000, rel=0.03)
    ratios = result.ratios
    assert ratios.et_tc == pytest.approx(volumes.ET / volumes.TC)
    assert ratios.netc_tc == pytest.approx(volumes.NETC / volumes.TC)
    assert ratios.snfh_wt == pytest.approx(volumes.SNFH / volumes.WT)
    assert result.lesion_count == 1


def test_ratios_are_none_when_the_denominator_is_empty() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = 2  # edema only: no tumour core
    result = measure(labels, np.eye(4), (1.0, 1.0, 1.0))
    assert result.ratios.et_tc is None
    assert result.ratios.netc_tc is None
    assert result.ratios.snfh_wt == 1.0
    assert result.rano is None


def test_empty_segmentation_gives_zero_volumes_and_no_geometry() -> None:
    result = measure(np.zeros((8, 8, 8), np.uint8), np.eye(4), (1.0, 1.0, 1.0))
    assert result.volumes_ml.WT == 0.0
    assert result.lesion_count == 0
    assert result.ratios.snfh_wt is None
    assert result.centroid_ras_mm is None
    assert result.hemisphere is None
    assert result.max_diameter_mm is None
    assert result.sphericity is None


@pytest.mark.parametrize(
    ("spacing", "semi_axes"),
    [((1.0, 1.5, 2.0), (12.0, 12.0, 12.0)), ((0.9, 1.2, 3.0), (21.0, 9.0, 12.0))],
)
def test_max_diameter_is_within_one_voxel_of_the_longest_axis(
    spacing: tuple[float, float, float], semi_axes: tuple[float, float, float]
) -> None:
    shape = grid_for(max(semi_axes), spacing)
    labels = ellipsoid(shape, spacing, semi_axes).astype(np.uint8)
    result = measure(labels, np.diag([*spacing, 1.0]), spacing)
    assert result.max_diameter_mm is not None
    assert result.max_diameter_mm <= 2 * max(semi_axes) + 1e-9
    assert result.max_diameter_mm >= 2 * max(semi_axes) - max(spacing)


def test_max_diameter_honours_a_rotated_and_permuted_affine() -> None:
    # voxel axis 0 runs along S (3 mm), axis 1 along R (1 mm), axis 2 along A (2 mm); the whole
    # grid is then turned 30 degrees about S: lengths must not change.
    spacing = (3.0, 1.0, 2.0)
    turn = math.radians(30)
    rotation = np.array(
        [[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]]
    )
    columns = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float).T * spacing
    affine = np.eye(4)
    affine[:3, :3] = rotation @ columns
    affine[:3, 3] = (-20.0, 15.0, 4.0)
    semi_axes = (9.0, 20.0, 10.0)  # longest along voxel axis 1 (R)
    labels = ellipsoid(grid_for(20, spacing), spacing, semi_axes).astype(np.uint8) * 3
    result = measure(labels, affine, spacing)
    assert axial_axis(affine) == 0
    assert result.max_diameter_mm == pytest.approx(40.0, abs=1.0)
    assert result.rano is not None
    assert result.rano.slice_axis == 0
    assert result.rano.longest_diameter_mm == pytest.approx(40.0, abs=1.0)
    assert result.rano.perpendicular_diameter_mm == pytest.approx(20.0, abs=2.0)


def test_rano_product_on_an_ellipsoid_uses_the_slice_with_most_enhancement() -> None:
    spacing = (1.0, 1.0, 2.0)
    shape = (50, 40, 30)
    centre = (25.0, 20.0, 13.0)
    labels = np.where(ellipsoid(shape, spacing, (22, 22, 20), centre), 2, 0).astype(np.uint8)
    labels[ellipsoid(shape, spacing, (15, 9, 6), centre)] = 3
    labels[ellipsoid(shape, spacing, (4, 3, 4), centre)] = 1  # necrotic cavity counts inside
    result = measure(labels, np.diag([*spacing, 1.0]), spacing)
    rano = result.rano
    assert rano is not None
    assert rano.slice_axis == 2
    assert rano.slice_index == 13
    assert rano.longest_diameter_mm == pytest.approx(30.0, abs=1.0)
    assert rano.perpendicular_diameter_mm == pytest.approx(18.0, abs=1.0)
    assert rano.product_mm2 == pytest.approx(
        rano.longest_diameter_mm * rano.perpendicular_diameter_mm
    )
    assert 29 * 17 <= rano.product_mm2 <= 30 * 18
    et_slice = labels[:, :, 13] == 3
    assert rano.et_area_mm2 == pytest.approx(et_slice.sum() * 1.0)
    assert rano.measurable


def test_small_enhancement_is_not_rano_measurable() -> None:
    labels = np.zeros((30, 30, 20), np.uint8)
    labels[10:16, 10:14, 8:10] = 3  # 6 x 4 mm
    rano = measure(labels, np.eye(4), (1.0, 1.0, 1.0)).rano
    assert rano is not None
    assert rano.longest_diameter_mm == pytest.approx(math.hypot(5, 3))
    assert rano.measurable is False


def test_sphericity_of_a_sphere_is_near_one_and_lower_for_an_elongated_ellipsoid() -> None:
    sphere = ellipsoid(grid_for(12, SPACING), SPACING, (12, 12, 12)).astype(np.uint8)
    result = measure(sphere, np.diag([*SPACING, 1.0]), SPACING)
    assert result.surface_method == "marching_cubes"
    assert result.surface_area_mm2 == pytest.approx(4 * math.pi * 12**2, rel=0.12)
    assert result.sphericity is not None
    # marching cubes on a binary mask keeps some staircase: about 0.91 here
    assert 0.9 < result.sphericity <= 1.0
    a, b = 24.0, 8.0
    cigar = ellipsoid(grid_for(a, SPACING), SPACING, (a, b, b)).astype(np.uint8)
    elongated = measure(cigar, np.diag([*SPACING, 1.0]), SPACING).sphericity
    assert elongated is not None
    # a 3:1 prolate spheroid: analytic sphericity ~0.85, seen through the same staircase
    e = math.sqrt(1 - (b / a) ** 2)
    area = 2 * math.pi * b**2 * (1 + a / (b * e) * math.asin(e))
    analytic = math.pi ** (1 / 3) * (6 * 4 / 3 * math.pi * a * b * b) ** (2 / 3) / area
    assert elongated == pytest.approx(analytic * result.sphericity, abs=0.04)
    assert elongated < result.sphericity - 0.1


def test_voxel_face_surface_is_exact_for_a_box_and_used_without_scikit_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spacing = (1.0, 1.5, 2.0)
    box = np.zeros((14, 10, 8), dtype=bool)
    box[2:12, 2:8, 2:6] = True  # 10 x 9 x 8 mm
    area, method = surface_area_mm2(box, spacing, "voxel_faces")
    assert method == "voxel_faces"
    assert area == pytest.approx(2 * (10 * 9 + 10 * 8 + 9 * 8))
    monkeypatch.setitem(sys.modules, "skimage.measure", None)  # import now fails
    sphere = ellipsoid(grid_for(12, SPACING), SPACING, (12, 12, 12)).astype(np.uint8)
    result = measure(sphere, np.diag([*SPACING, 1.0]), SPACING)
    assert result.surface_method == "voxel_faces"
    assert result.sphericity == pytest.approx(2 / 3, abs=0.05)  # faces overcount curved area
    with pytest.raises(ValueError, match="unknown surface method 'mesh'"):
        surface_area_mm2(box, spacing, "mesh")  # type: ignore[arg-type]


def test_lesions_are_26_connected_components() -> None:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[3:8, 3:8, 3:8] = 2
    labels[20:25, 20:25, 20:25] = 3
    assert measure(labels, np.eye(4), (1.0, 1.0, 1.0)).lesion_count == 2
    labels[8, 8, 8] = 1  # touches blob 1 only at a corner: part of it
    assert measure(labels, np.eye(4), (1.0, 1.0, 1.0)).lesion_count == 2
    labels[25, 25, 25] = 2  # corner neighbour of blob 2: joins it
    assert measure(labels, np.eye(4), (1.0, 1.0, 1.0)).lesion_count == 2
    labels[27, 27, 27] = 2  # two voxels away from everything: a lesion of its own
    assert measure(labels, np.eye(4), (1.0, 1.0, 1.0)).lesion_count == 3


def test_centroid_is_reported_in_voxels_and_scanner_mm_with_its_hemisphere() -> None:
    spacing = (2.0, 1.0, 1.0)
    affine = np.diag([-2.0, 1.0, 1.0, 1.0])  # LAS: x decreases with voxel index
    affine[:3, 3] = (40.0, -20.0, 0.0)  # voxel 20 on axis 0 sits at x = 0
    labels = np.zeros((40, 20, 20), np.uint8)
    labels[4:8, 8:12, 8:12] = 2  # voxel centre 5.5 -> x = +29: right
    result = measure(labels, affine, spacing)
    assert result.centroid_voxel == pytest.approx((5.5, 9.5, 9.5))
    assert result.centroid_ras_mm == pytest.approx((29.0, -10.5, 9.5))
    assert result.hemisphere == "right"
    labels[:] = 0
    labels[30:34, 8:12, 8:12] = 2  # x = 40 - 2 * 31.5 = -23: left
    assert measure(labels, affine, spacing).hemisphere == "left"
    labels[:] = 0
    labels[19:22, 8:12, 8:12] = 2  # centre voxel 20: x = 0
    assert measure(labels, affine, spacing).hemisphere == "midline"
    assert hemisphere(1.5) == "midline"
    assert hemisphere(2.5) == "right"
    assert hemisphere(-2.5) == "left"
    assert hemisphere(-30.0, midline_x_mm=-28.0, tolerance_mm=1.0) == "left"
    with pytest.raises(ValueError, match="tolerance_mm must be >= 0, got -1"):
        hemisphere(0.0, tolerance_mm=-1)


def test_analyzer_takes_its_midline_from_the_head_or_from_options() -> None:
    # corner-origin grid like BraTS: the head spans x = 0..19 mm, its midline is x = 9.5 mm
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:6, 8:12, 8:12] = 2  # centroid x = 3.5 mm: the head's left half (RAS x < midline)
    images = np.ones((4, 20, 20, 20), np.float32)
    host = AnalyzerHost(PluginSettings(entry_points=False))
    inputs = study_inputs(labels, images=images)
    default = host.run(inputs, artefacts=MemoryArtefactSink())["volumetrics"]
    assert default.result is not None
    assert default.result["hemisphere"] == "left"
    mirrored = study_inputs(labels[::-1].copy(), images=images)
    flipped = host.run(mirrored, artefacts=MemoryArtefactSink())["volumetrics"]
    assert flipped.result is not None
    assert flipped.result["hemisphere"] == "right"
    shifted = host.run(
        inputs,
        artefacts=MemoryArtefactSink(),
        options={"volumetrics": {"midline_x_mm": 0.0, "midline_tolerance_mm": 1.0}},
    )["volumetrics"]
    assert shifted.result is not None
    assert shifted.result["hemisphere"] == "right"


def test_max_pairwise_distance_finds_the_farthest_pair_across_chunks() -> None:
    rng = np.random.default_rng(5)
    points = rng.normal(size=(1500, 3))
    points[1234] = (50.0, 0.0, 0.0)
    points[7] = (-50.0, 0.0, 0.0)
    distance, i, j = max_pairwise_distance(points)
    assert distance == pytest.approx(100.0)
    assert {i, j} == {7, 1234}
    with pytest.raises(ValueError, match="at least one point"):
        max_pairwise_distance(np.empty((0, 3)))
