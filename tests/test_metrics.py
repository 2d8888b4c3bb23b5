"""Dice / HD95 with BraTS conventions, checked on analytic shapes."""

from __future__ import annotations

import numpy as np
import pytest

from cerebrascan.imaging import regions
from cerebrascan.imaging.regions import structure_mask, volumes_ml
from cerebrascan.training.metrics import EMPTY_HD95_MM, dice, hd95, region_metrics


def _sphere(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_dice_of_identical_disjoint_and_empty_masks() -> None:
    a = _sphere((30, 30, 30), (15, 15, 15), 6)
    assert dice(a, a) == 1.0
    assert dice(a, np.roll(a, 14, axis=0)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_hd95_of_concentric_spheres_is_the_radius_gap() -> None:
    inner = _sphere((60, 60, 60), (30, 30, 30), 10)
    outer = _sphere((60, 60, 60), (30, 30, 30), 15)
    assert hd95(inner, outer, (1.0, 1.0, 1.0)) == pytest.approx(5.0, abs=1.0)
    assert hd95(inner, outer, (2.0, 2.0, 2.0)) == pytest.approx(10.0, abs=2.0)


def _whole_grid_hd95(prediction, reference, spacing) -> float:
    """HD95 with the distance transforms over the whole grid (what the cropped one must equal)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 1)

    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)

    sp, sr = surface(prediction), surface(reference)
    pooled = np.concatenate(
        (
            ndimage.distance_transform_edt(~sr, sampling=spacing)[sp],
            ndimage.distance_transform_edt(~sp, sampling=spacing)[sr],
        )
    )
    return float(np.percentile(pooled, 95))


@pytest.mark.parametrize(
    "prediction_centre, reference_centre",
    [((20, 22, 18), (26, 20, 21)), ((3, 30, 20), (6, 27, 37))],  # the second touches two borders
)
def test_hd95_on_the_bounding_box_equals_the_whole_grid(prediction_centre, reference_centre):
    shape, spacing = (48, 56, 40), (1.2, 0.9, 2.5)
    prediction = _sphere(shape, prediction_centre, 7) | _sphere(shape, (40, 45, 30), 3)
    reference = _sphere(shape, reference_centre, 9)
    assert hd95(prediction, reference, spacing) == _whole_grid_hd95(prediction, reference, spacing)


def test_hd95_brats_conventions_for_empty_masks() -> None:
    empty = np.zeros((10, 10, 10), bool)
    full = _sphere((10, 10, 10), (5, 5, 5), 3)
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert hd95(full, empty, (1, 1, 1)) == EMPTY_HD95_MM


def test_regions_nest_labels() -> None:
    labels = np.array([0, 1, 2, 3, 3], dtype=np.uint8)
    assert structure_mask(labels, "WT").tolist() == [False, True, True, True, True]
    assert structure_mask(labels, "TC").tolist() == [False, True, False, True, True]
    assert structure_mask(labels, "ET").tolist() == [False, False, False, True, True]
    with pytest.raises(KeyError, match="unknown BraTS"):
        structure_mask(labels, "XX")


def test_volumes_in_millilitres_honour_spacing() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:2] = 1
    labels[2:5] = 2
    labels[5:6] = 3
    volumes = volumes_ml(labels, (2.0, 1.0, 1.0))
    assert volumes == pytest.approx({"NETC": 0.4, "SNFH": 0.6, "ET": 0.2, "TC": 0.6, "WT": 1.2})


def test_region_metrics_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        region_metrics(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8), (1, 1, 1))


def test_label_counts_slab_by_slab_equal_bincount(monkeypatch: pytest.MonkeyPatch) -> None:
    # slabs of 1000 voxels: counts carried across slab edges, values above the labels widen
    # the counts as bincount does, a Fortran-ordered map is counted as a whole
    monkeypatch.setattr(regions, "COUNT_SLAB_VOXELS", 1000)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(23, 19, 17)).astype(np.uint8)
    assert np.array_equal(regions.label_counts(labels), np.bincount(labels.ravel(), minlength=4))
    wide = rng.integers(0, 9, size=(23, 19, 17))
    assert np.array_equal(regions.label_counts(wide), np.bincount(wide.ravel(), minlength=4))
    fortran = np.asfortranarray(labels)
    assert np.array_equal(regions.label_counts(fortran), np.bincount(labels.ravel(), minlength=4))
    volumes = volumes_ml(labels, (1.0, 2.0, 0.5))
    assert volumes["WT"] == pytest.approx(np.count_nonzero(labels) / 1000.0)
