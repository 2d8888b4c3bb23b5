"""Tests of the synthetic tumour phantom generator (cerebrascan.phantoms).

Four cases are rendered in total (module-scoped fixtures): one in memory with its warped
anatomy, the same seed again for determinism, and a two-case cohort written to disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cerebrascan.phantoms import PhantomParams, generate_case, sample_case_params, write_cohort
from cerebrascan.phantoms.contrasts import (
    MODALITIES,
    TISSUE_LEVELS,
    estimate_tissue_means,
    normal_tissue_signal,
    tissue_memberships,
)
from cerebrascan.phantoms.generator import (
    PhantomCase,
    WarpedAnatomy,
    build_coordinate_map,
    case_seed,
    generate_case_with_anatomy,
)
from cerebrascan.phantoms.tumour import TumourShape, build_tumour_labels
from cerebrascan.phantoms.tumour_types import case_tumour_type

SHAPE = (240, 240, 155)
ATLAS_AFFINE = np.diag([-1.0, 1.0, 1.0, 1.0])
REGIONS = {"NETC": (1,), "SNFH": (2,), "ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}


def _cohort_seed_with_full_tumour() -> int:
    """First cohort seed whose case 0 is a necrotic tumour with real edema (sampler only)."""
    for seed in range(1000):
        tumour = sample_case_params(case_seed(seed, 0))["tumour"]
        if tumour["phenotype"] == "necrotic" and tumour["edema_margin_mm"] >= 6.0:
            if tumour["core_radius_mm"] >= 12.0 and tumour["supratentorial"]:
                return seed
    raise AssertionError("no suitable cohort seed in range(1000)")


@pytest.fixture(scope="module")
def cohort_seed() -> int:
    return _cohort_seed_with_full_tumour()


@pytest.fixture(scope="module")
def case_with_anatomy(cohort_seed: int) -> tuple[PhantomCase, WarpedAnatomy]:
    return generate_case_with_anatomy(case_seed(cohort_seed, 0), "PHANTOM-00000-000")


@pytest.fixture(scope="module")
def case(case_with_anatomy: tuple[PhantomCase, WarpedAnatomy]) -> PhantomCase:
    return case_with_anatomy[0]


@pytest.fixture(scope="module")
def anatomy(case_with_anatomy: tuple[PhantomCase, WarpedAnatomy]) -> WarpedAnatomy:
    return case_with_anatomy[1]


@pytest.fixture(scope="module")
def cohort(cohort_seed: int, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_cohort(tmp_path_factory.mktemp("cohort"), seed=cohort_seed, n_cases=2)


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_arrays(case: PhantomCase, cohort_seed: int) -> None:
    again = generate_case(case_seed(cohort_seed, 0), "PHANTOM-00000-000")
    assert np.array_equal(again.segmentation, case.segmentation)
    for mod in MODALITIES:
        assert again.images[mod].tobytes() == case.images[mod].tobytes(), mod
    assert json.dumps(again.truth, sort_keys=True) == json.dumps(case.truth, sort_keys=True)


def test_written_case_zero_equals_standalone_case(case: PhantomCase, cohort: list[Path]) -> None:
    folder = cohort[0]
    assert folder.name == "PHANTOM-00000-000"
    seg, _ = _load(folder / "PHANTOM-00000-000-seg.nii.gz")
    assert np.array_equal(seg, case.segmentation)
    for mod in MODALITIES:
        data, _ = _load(folder / f"PHANTOM-00000-000-{mod}.nii.gz")
        assert np.array_equal(data, case.images[mod]), mod


def test_different_seeds_give_different_tumours(cohort: list[Path]) -> None:
    truths = [json.loads((folder / "truth.json").read_text()) for folder in cohort]
    assert truths[0]["seed"] != truths[1]["seed"]
    assert truths[0]["centre_voxel"] != truths[1]["centre_voxel"]
    segs = [_load(folder / f"{folder.name}-seg.nii.gz")[0] for folder in cohort]
    assert not np.array_equal(segs[0], segs[1])


def test_case_seed_independent_of_cohort_size(cohort_seed: int, cohort: list[Path]) -> None:
    seeds_5 = [case_seed(cohort_seed, k) for k in range(5)]
    seeds_2 = [case_seed(cohort_seed, k) for k in range(2)]
    assert seeds_5[:2] == seeds_2
    assert len(set(seeds_5)) == 5
    assert case_seed(cohort_seed + 1, 0) != seeds_5[0]
    written = [json.loads((folder / "truth.json").read_text())["seed"] for folder in cohort]
    assert written == seeds_2
    assert [folder.name for folder in cohort] == ["PHANTOM-00000-000", "PHANTOM-00001-000"]


def test_typed_cohort_draws_types_by_weight_apart_from_image_streams() -> None:
    mix = {"generic": 0.5, "meningioma": 0.3, "schwannoma": 0.2}
    drawn = [case_tumour_type(5, k, mix) for k in range(2000)]
    assert drawn == [case_tumour_type(5, k, mix) for k in range(2000)]
    for name, weight in mix.items():
        assert abs(drawn.count(name) / len(drawn) - weight) < 0.04, name
    assert drawn[:50] != [case_tumour_type(6, k, mix) for k in range(50)]
    assert "glioma" not in drawn, "a type never weighted is never drawn"


# ------------------------------------------------------------------ shapes, dtypes, background


def test_shapes_dtypes_affine(case: PhantomCase) -> None:
    assert set(case.images) == set(MODALITIES)
    for mod, image in case.images.items():
        assert image.shape == SHAPE, mod
        assert image.dtype == np.float32, mod
        assert np.isfinite(image).all(), mod
    assert case.segmentation.shape == SHAPE
    assert case.segmentation.dtype == np.uint8
    assert set(np.unique(case.segmentation)) == {0, 1, 2, 3}
    assert case.affine.dtype == np.float64
    assert np.array_equal(case.affine, ATLAS_AFFINE)


def test_background_exactly_zero_and_brain_positive(
    case: PhantomCase, anatomy: WarpedAnatomy
) -> None:
    brain = anatomy.brain
    assert 1.2e6 < brain.sum() < 1.8e6
    for mod, image in case.images.items():
        assert np.all(image[~brain] == 0.0), mod
        assert np.all(image[brain] > 0.0), mod


def test_labels_inside_brain(case: PhantomCase, anatomy: WarpedAnatomy) -> None:
    tumour = case.segmentation > 0
    assert tumour.any()
    assert not np.any(tumour & ~anatomy.brain)
    edema = case.segmentation == 2
    assert not np.any(edema & anatomy.ventricles)


def test_written_files_headers(cohort: list[Path]) -> None:
    folder = cohort[1]
    names = sorted(p.name for p in folder.iterdir())
    expected = [f"{folder.name}-{m}.nii.gz" for m in (*MODALITIES, "seg")] + ["truth.json"]
    assert names == sorted(expected)
    for mod in MODALITIES:
        data, image = _load(folder / f"{folder.name}-{mod}.nii.gz")
        assert image.get_data_dtype() == np.float32
        assert data.shape == SHAPE and np.isfinite(data).all()
        assert np.allclose(image.affine, ATLAS_AFFINE)
    seg, image = _load(folder / f"{folder.name}-seg.nii.gz")
    assert image.get_data_dtype() == np.uint8
    assert seg.dtype == np.uint8 and seg.shape == SHAPE
    assert np.allclose(image.affine, ATLAS_AFFINE)


# ----------------------------------------------------------------------------------- truth


@pytest.mark.parametrize("index", [0, 1])
def test_truth_matches_written_segmentation(cohort: list[Path], index: int) -> None:
    folder = cohort[index]
    truth = json.loads((folder / "truth.json").read_text())
    seg, image = _load(folder / f"{folder.name}-seg.nii.gz")
    voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000.0
    for region, labels in REGIONS.items():
        count = int(np.isin(seg, labels).sum())
        assert truth["voxel_counts"][region] == count, region
        assert truth["volumes_ml"][region] == pytest.approx(count * voxel_ml, abs=1e-9), region
    tumour = np.argwhere(seg > 0)
    assert truth["extent_voxels"]["min"] == tumour.min(axis=0).tolist()
    assert truth["extent_voxels"]["max"] == tumour.max(axis=0).tolist()
    core = np.argwhere(np.isin(seg, (1, 3)))
    reference = core if core.size else tumour
    assert np.allclose(truth["centre_voxel"], reference.mean(axis=0), atol=1e-5)
    ras = image.affine @ np.append(truth["centre_voxel"], 1.0)
    assert np.allclose(truth["centre_ras_mm"], ras[:3], atol=1e-5)
    assert truth["case_id"] == folder.name
    assert truth["shape"] == list(SHAPE)
    assert truth["spacing_mm"] == [1.0, 1.0, 1.0]
    assert np.allclose(truth["affine"], ATLAS_AFFINE)
    for key in ("anatomy_transform", "mass_effect", "tumour", "intensity", "placement"):
        assert key in truth["params"], key


def test_sub_regions_nested(case: PhantomCase, anatomy: WarpedAnatomy) -> None:
    seg = case.segmentation
    core = np.isin(seg, (1, 3))
    necrosis = seg == 1
    # the tumour core is one connected blob
    assert ndimage.label(core)[1] == 1
    # necrosis is wrapped by the enhancing rim: almost no NETC voxel touches edema/background
    netc_border = necrosis & ~ndimage.binary_erosion(necrosis)
    outside_core = ndimage.binary_dilation(~core) & netc_border
    assert outside_core.sum() <= 0.05 * netc_border.sum()
    # the edema wraps the core (except at ventricles and the brain edge)
    ring = ndimage.binary_dilation(core) & ~core & anatomy.brain & ~anatomy.ventricles
    assert (seg[ring] == 2).mean() > 0.9


# ----------------------------------------------------------------------------- contrasts


def _median(image: np.ndarray, mask: np.ndarray) -> float:
    assert mask.sum() > 100
    return float(np.median(image[mask]))


def test_normal_tissue_contrasts(case: PhantomCase, anatomy: WarpedAnatomy) -> None:
    away = ~ndimage.binary_dilation(case.segmentation > 0, iterations=3)
    csf = anatomy.ventricles & away
    wm = (anatomy.tissue == 3) & away
    gm = (anatomy.tissue == 2) & away
    t1n, t2w, t2f = (case.images[m] for m in ("t1n", "t2w", "t2f"))
    assert _median(t1n, csf) < _median(t1n, gm) < _median(t1n, wm)
    assert _median(t2f, csf) < _median(t2f, wm) < _median(t2f, gm)
    assert _median(t2w, csf) > _median(t2w, gm) > _median(t2w, wm)


def test_tumour_contrasts(case: PhantomCase, anatomy: WarpedAnatomy) -> None:
    seg = case.segmentation
    wm = (anatomy.tissue == 3) & ~ndimage.binary_dilation(seg > 0, iterations=3)
    # interior voxels avoid the partial-volume blending at label borders
    netc, edema, et = (ndimage.binary_erosion(seg == label) for label in (1, 2, 3))
    t1n, t1c, t2w, t2f = (case.images[m] for m in MODALITIES)
    assert _median(t1c, et) > 1.2 * _median(t1c, wm)
    assert _median(t1c, netc) < _median(t1c, et)
    assert _median(t1n, netc) < _median(t1n, wm)
    assert _median(t2w, netc) > _median(t2w, edema) > _median(t2w, wm)
    assert _median(t2f, edema) > _median(t2f, wm)
    assert _median(t1c, edema) < _median(t1c, wm)


def test_tissue_memberships_and_levels() -> None:
    means = (300.0, 500.0, 700.0)
    t1 = np.array([100.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0], dtype=np.float32)
    members = tissue_memberships(t1, means)
    assert np.allclose(members.sum(axis=1), 1.0)
    assert members[1].tolist() == [1.0, 0.0, 0.0]
    assert members[3].tolist() == [0.0, 1.0, 0.0]
    assert members[5].tolist() == [0.0, 0.0, 1.0]
    at_means = tissue_memberships(np.array(means, dtype=np.float32), means)
    for mod, levels in TISSUE_LEVELS.items():
        lv = (levels["csf"], levels["gm"], levels["wm"])
        signal = normal_tissue_signal(np.array(means, dtype=np.float32), at_means, means, lv)
        assert np.allclose(signal, lv), mod
    t1n = normal_tissue_signal(t1, members, means, None)
    assert np.allclose(t1n, t1 / 700.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        tissue_memberships(t1, (500.0, 300.0, 700.0))
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(m, 30.0, 5000) for m in means])
    assert np.allclose(estimate_tissue_means(values), means, atol=15.0)


def test_coordinate_map_identity_and_mass_effect() -> None:
    shape = (21, 21, 21)
    centre = np.array([10.0, 10.0, 10.0])
    identity = build_coordinate_map(
        np.zeros(3, dtype=int), shape, np.eye(3), np.zeros(3), centre, centre, 0.0, 5.0, 10.0
    )
    assert np.allclose(identity, np.indices(shape))
    pushed = build_coordinate_map(
        np.zeros(3, dtype=int), shape, np.eye(3), np.zeros(3), centre, centre, 3.0, 6.0, 10.0
    )
    # a case voxel at the tumour edge (r = 6) samples atlas anatomy 3 mm closer to the centre
    assert np.allclose(pushed[:, 16, 10, 10], [13.0, 10.0, 10.0], atol=1e-5)
    # far away the displacement has decayed: at r = 10, 3 * exp(-0.4) mm
    assert np.allclose(pushed[0, 10, 10, 20], 10.0, atol=1e-5)
    assert pushed[2, 10, 10, 20] == pytest.approx(20.0 - 3.0 * np.exp(-0.4), abs=1e-4)
    with pytest.raises(ValueError, match="displacement_mm"):
        build_coordinate_map(
            np.zeros(3, dtype=int), shape, np.eye(3), np.zeros(3), centre, centre, 6.0, 5.0, 9.0
        )


def _synthetic_tumour(phenotype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of a tumour centred 8 mm from the edge of a synthetic half-space brain."""
    grid = (64, 64, 64)
    brain = np.zeros(grid, dtype=bool)
    brain[:40] = True  # brain edge between x = 39 and x = 40
    ventricles = np.zeros(grid, dtype=bool)
    ventricles[10:16, 26:38, 26:38] = True
    shape = TumourShape(
        phenotype=phenotype,
        core_radius_mm=12.0,
        axis_scales=(1.2, 1.0, 1 / 1.2),
        orientation=(1.0, 0.0, 0.0, 0.0),
        boundary_noise_mm=2.0,
        boundary_noise_scale_mm=6.0,
        rim_thickness_mm=4.0,
        rim_noise_mm=1.0,
        patchy_et_fraction=0.2,
        edema_margin_mm=10.0,
        edema_gm_factor=0.3,
        edema_noise_mm=2.0,
    )
    white_matter = np.full(grid, 0.8, dtype=np.float32)
    centre = np.array([32.0, 32.0, 32.0])
    labels = build_tumour_labels(
        shape, centre, brain, ventricles, white_matter, np.random.default_rng(5)
    )
    return labels, brain, ventricles


@pytest.mark.parametrize("phenotype", ["necrotic", "solid", "non_enhancing", "patchy"])
def test_tumour_geometry_phenotypes(phenotype: str) -> None:
    labels, brain, ventricles = _synthetic_tumour(phenotype)
    counts = np.bincount(labels.ravel(), minlength=4)
    # the ellipsoid crosses the brain edge: labels are clipped to the brain
    assert not np.any((labels > 0) & ~brain)
    assert labels[39].any()
    assert not np.any((labels == 2) & ventricles)
    core = counts[1] + counts[3]
    assert 3000 < core < 12000  # sphere of 12 mm, partly cut by the edge: ~5-7 mL
    assert counts[2] > 0.5 * core  # 10 mm of edema around it
    if phenotype == "necrotic":
        assert counts[1] > 0 and counts[3] > 0
    elif phenotype == "solid":
        assert counts[1] == 0 and counts[3] == core
    elif phenotype == "non_enhancing":
        assert counts[3] == 0 and counts[1] == core
    else:
        assert 0 < counts[3] < 0.3 * core


# -------------------------------------------------------------------------------- variety


def test_parameter_sampler_variety() -> None:
    drawn = [sample_case_params(seed) for seed in range(24)]
    tumours = [d["tumour"] for d in drawn]
    sizes = [t["wt_target_ml"] for t in tumours]
    assert min(sizes) < 20.0 and max(sizes) > 100.0
    assert all(10.0 <= s <= 180.0 for s in sizes)
    phenotypes = {t["phenotype"] for t in tumours}
    assert "solid" in phenotypes  # no necrosis
    assert "non_enhancing" in phenotypes  # no ET
    assert phenotypes & {"necrotic", "patchy"}
    assert any(t["minimal_edema"] for t in tumours)
    margins = [t["edema_margin_mm"] for t in tumours]
    assert min(margins) < 3.0 and max(margins) > 8.0
    scales = [d["intensity"]["global_scale"]["t1n"] for d in drawn]
    assert max(scales) / min(scales) > 2.0
    json.dumps(drawn)  # JSON-serialisable
    assert sample_case_params(3) == sample_case_params(3)


def test_invalid_arguments_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"scale_range.*\(1\.1, 0\.9\)"):
        PhantomParams(scale_range=(1.1, 0.9))
    with pytest.raises(ValueError, match="phenotype_probs"):
        PhantomParams(phenotype_probs=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="n_cases must be >= 1, got 0"):
        write_cohort(tmp_path, seed=1, n_cases=0)
    with pytest.raises(ValueError, match=r"type_probs.*unknown: \['oligodendroglioma'\]"):
        write_cohort(tmp_path, seed=1, n_cases=1, type_probs={"oligodendroglioma": 1.0})
    with pytest.raises(ValueError, match="type_probs"):
        write_cohort(tmp_path, seed=1, n_cases=1, type_probs={"generic": 0.0})
    assert not list(tmp_path.iterdir()), "a bad type mix writes nothing"
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        generate_case(-1, "PHANTOM-00000-000")
    with pytest.raises(ValueError, match="case_id"):
        generate_case(1, "../escape")
