"""Radiomics extraction (cerebrascan.radiomics.extract) against pyradiomics' published reference.

The reference is pyradiomics' own test baseline for its sample case ``brain1``
(``tests/data/pyradiomics_brain1``, see its README): per feature class, the ``brain1`` column of
``baseline_<class>.csv`` with the settings that column states. pyradiomics' test suite accepts
3 % relative difference; these tests ask for 0.1 % on every value and 1e-6 on all but the four
mesh-based shape features, whose baseline was made by pyradiomics 2.0.1 (the csv's
``diagnostics_Versions_PyRadiomics``) and differs from 3.1.4 by up to 0.09 %.
"""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import radiomics  # noqa: F401  (fails, not skips, without the radiomics extra)
import SimpleITK as sitk  # noqa: N813

from cerebrascan.imaging.sitk_images import Geometry, as_geometry
from cerebrascan.radiomics.extract import (
    DEFAULT_PARAMS_FILE,
    MIN_REGION_VOXELS,
    extract_array_features,
    extract_features,
    extract_regions,
    load_params,
    make_extractor,
)

DATA = Path(__file__).resolve().parent / "data" / "pyradiomics_brain1"
CASE = "brain1"
CLASSES = ("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
REL_TOL = 1e-3
STRICT_REL_TOL = 1e-6
MESH_FEATURES = {
    "original_shape_MeshVolume",
    "original_shape_SurfaceArea",
    "original_shape_SurfaceVolumeRatio",
    "original_shape_Sphericity",
}
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def _read_column(cls: str) -> tuple[dict[str, str], dict[str, float]]:
    """(diagnostics, reference values) of the brain1 column of ``baseline_<cls>.csv``."""
    with (DATA / f"baseline_{cls}.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index(CASE)
    diagnostics = {row[0]: row[column] for row in rows[1:] if row[0].startswith("diagnostics_")}
    values = {
        row[0]: float(row[column]) for row in rows[1:] if not row[0].startswith("diagnostics")
    }
    return diagnostics, values


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """Settings, image types, hashes and reference values of brain1, all classes."""
    columns = {cls: _read_column(cls) for cls in CLASSES}
    diagnostics = [diag for diag, _ in columns.values()]
    for key in (
        "diagnostics_Configuration_TestCase",
        "diagnostics_Configuration_Settings",
        "diagnostics_Configuration_EnabledImageTypes",
        "diagnostics_Image-original_Hash",
        "diagnostics_Mask-original_Hash",
    ):
        assert len({diag[key] for diag in diagnostics}) == 1, f"classes disagree on {key}"
    first = diagnostics[0]
    assert first["diagnostics_Configuration_TestCase"] == CASE
    return {
        "settings": ast.literal_eval(first["diagnostics_Configuration_Settings"]),
        "image_types": ast.literal_eval(first["diagnostics_Configuration_EnabledImageTypes"]),
        "image_hash": first["diagnostics_Image-original_Hash"],
        "mask_hash": first["diagnostics_Mask-original_Hash"],
        "values": {cls: values for cls, (_, values) in columns.items()},
    }


@pytest.fixture(scope="module")
def brain1(reference: dict[str, Any]) -> tuple[sitk.Image, sitk.Image]:
    image = sitk.ReadImage(str(DATA / "brain1_image.nrrd"))
    mask = sitk.ReadImage(str(DATA / "brain1_label.nrrd"))
    # The files are the ones the baseline was computed from (pyradiomics checks the same).
    assert sitk.Hash(image) == reference["image_hash"]
    assert sitk.Hash(mask) == reference["mask_hash"]
    return image, mask


@pytest.fixture(scope="module")
def brain1_params(reference: dict[str, Any]) -> dict[str, Any]:
    """The baseline's settings as a parameter dict, all features of the tested classes."""
    return {
        "imageType": reference["image_types"],
        "setting": reference["settings"],
        "featureClass": {cls: None for cls in CLASSES},
    }


@pytest.fixture(scope="module")
def brain1_features(
    brain1: tuple[sitk.Image, sitk.Image], brain1_params: dict[str, Any]
) -> dict[str, float]:
    image, mask = brain1
    return extract_features(image, mask, brain1_params, label=brain1_params["setting"]["label"])


def _rel_diff(value: float, expected: float) -> float:
    if expected == 0.0:
        return 0.0 if value == 0.0 else math.inf
    return abs(value / expected - 1.0)


@pytest.mark.parametrize("cls", CLASSES)
def test_brain1_matches_pyradiomics_baseline(
    cls: str, reference: dict[str, Any], brain1_features: dict[str, float]
) -> None:
    expected = reference["values"][cls]
    computed = {k: v for k, v in brain1_features.items() if k.startswith(f"original_{cls}_")}
    assert set(computed) == set(expected), "features differ from the baseline's"
    off = {}
    for name, value in expected.items():
        tol = REL_TOL if name in MESH_FEATURES else STRICT_REL_TOL
        if not _rel_diff(computed[name], value) < tol:
            off[name] = (computed[name], value)
    assert not off, f"(computed, reference) beyond tolerance: {off}"


def test_brain1_reference_is_complete(reference: dict[str, Any]) -> None:
    counts = {cls: len(values) for cls, values in reference["values"].items()}
    assert counts == {
        "firstorder": 18,
        "shape": 14,
        "glcm": 24,
        "glrlm": 16,
        "glszm": 16,
        "gldm": 14,
        "ngtdm": 5,
    }


def test_array_path_equals_image_path(
    brain1: tuple[sitk.Image, sitk.Image],
    brain1_params: dict[str, Any],
    brain1_features: dict[str, float],
) -> None:
    """numpy (x, y, z) arrays + geometry give the same features as the SimpleITK images."""
    image, mask = brain1
    to_xyz = (2, 1, 0)
    features = extract_array_features(
        np.transpose(sitk.GetArrayFromImage(image), to_xyz),
        np.transpose(sitk.GetArrayFromImage(mask), to_xyz),
        Geometry.from_image(image),
        brain1_params,
    )
    assert features.keys() == brain1_features.keys()
    for name, value in brain1_features.items():
        assert features[name] == pytest.approx(value, rel=1e-9), name


def _nested_case(
    shape: tuple[int, int, int] = (30, 30, 20),
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four modalities and BraTS labels: SNFH shell around an ET core; no NETC."""
    rng = np.random.default_rng(20240917)
    x, y, z = np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij")
    radius = np.sqrt(x**2 + y**2 + (1.5 * z) ** 2)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[radius < 9] = 2
    labels[radius < 5] = 3
    brain = radius < 14
    images = {
        name: (
            brain * (100.0 + 20 * i)
            + (labels == 2) * 25.0 * (i + 1)
            + (labels == 3) * 60.0
            + brain * rng.normal(0.0, 8.0, shape)
        ).astype(np.float32)
        for i, name in enumerate(MODALITIES)
    }
    return images, labels


@pytest.fixture(scope="module")
def nested() -> tuple[dict[str, np.ndarray], np.ndarray]:
    return _nested_case()


def test_extract_regions_keys_skips_and_volume(
    nested: tuple[dict[str, np.ndarray], np.ndarray],
) -> None:
    images, labels = nested
    result = extract_regions(images, labels, np.diag([-1.0, 1.0, 1.0, 1.0]))  # repo YAML, 1 mm

    assert result.skipped == {"NETC": "empty (0 voxels)"}
    assert result.voxels["WT"] == int((labels > 0).sum())
    assert result.voxels["TC"] == result.voxels["ET"] == int((labels == 3).sum())

    names = {key.split("_", 2)[2] for key in result.features}
    assert {key.split("_", 2)[0] for key in result.features} == {"SNFH", "ET", "TC", "WT"}
    expected = {
        f"{r}_{m}_{n}" for r in ("SNFH", "ET", "TC", "WT") for m in MODALITIES for n in names
    }
    assert set(result.features) == expected
    assert {n.split("_")[1] for n in names} == set(CLASSES)
    assert "original_glcm_SumAverage" not in names  # disabled in brats_ibsi.yaml
    assert all(math.isfinite(v) for v in result.features.values())

    wt_voxels = int((labels > 0).sum())
    for modality in MODALITIES:
        assert result.features[f"WT_{modality}_original_shape_VoxelVolume"] == wt_voxels
    # Same mask, different modality: intensity features differ, shape does not.
    assert result.features["WT_t1n_original_firstorder_Mean"] != pytest.approx(
        result.features["WT_t2f_original_firstorder_Mean"]
    )


def test_extract_regions_volume_uses_voxel_size(
    nested: tuple[dict[str, np.ndarray], np.ndarray],
) -> None:
    """Anisotropic grid, no resampling: VoxelVolume is voxel count x voxel volume."""
    images, labels = nested
    params = load_params()
    params["setting"]["resampledPixelSpacing"] = None
    params["featureClass"] = {"shape": ["VoxelVolume"]}
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    result = extract_regions({"t1c": images["t1c"]}, labels, affine, params, regions=("WT",))
    assert result.features == {
        "WT_t1c_original_shape_VoxelVolume": pytest.approx(int((labels > 0).sum()) * 2.5)
    }


def test_extract_regions_skips_small_and_flat_regions() -> None:
    images, labels = _nested_case()
    labels[labels == 3] = 2
    labels[15, 15, 10:13] = 1  # 3 voxels of NETC
    labels[2:6, 2:6, 2] = 3  # 16 voxels of ET, in one slice (2D): kept
    labels[2, 20:25, 2] = 3  # 5 more ET voxels on a line: ET stays 2D
    params = load_params()
    params["setting"]["minimumROIDimensions"] = 3
    params["featureClass"] = {"firstorder": ["Mean"]}
    result = extract_regions(images, labels, (1.0, 1.0, 1.0), params, regions=("NETC", "ET"))
    assert result.features == {}
    assert result.skipped == {
        "NETC": f"3 voxels, fewer than min_voxels={MIN_REGION_VOXELS}",
        "ET": "spans 2 dimension(s), fewer than minimumROIDimensions=3",
    }


def _with_first_voxel(array: np.ndarray, value: float) -> np.ndarray:
    changed = array.copy()
    changed[0, 0, 0] = value
    return changed


BAD_ARGUMENTS = [
    (lambda a: {"labels": _with_first_voxel(a["labels"], 7)}, "found [7]"),
    (lambda a: {"images": {"t1_n": a["images"]["t1n"]}}, "'t1_n'"),
    (lambda a: {"images": {"t1n": a["images"]["t1n"][:2]}}, "shape (2, 8, 8) differs"),
    (lambda a: {"images": {"t1n": _with_first_voxel(a["images"]["t1n"], np.nan)}}, "1 NaN/inf"),
    (lambda a: {"regions": ("GTV",)}, "['GTV']"),
    (lambda a: {"min_voxels": 0}, "min_voxels must be an integer >= 1, got 0"),
    (lambda a: {"geometry": (1.0, 0.0, 1.0)}, "(1.0, 0.0, 1.0)"),
    (lambda a: {"params": {"setting": {"binWidth": -1}}}, "/setting/binWidth"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ARGUMENTS)
def test_extract_regions_names_bad_values(change: Any, message: str) -> None:
    images, labels = _nested_case((8, 8, 8))
    args: dict[str, Any] = {"images": images, "labels": labels, "geometry": (1.0, 1.0, 1.0)}
    args.update(change(args))
    with pytest.raises(ValueError) as info:
        extract_regions(**args)
    assert message in str(info.value)


def test_repo_params_load_and_validate() -> None:
    params = load_params()
    assert params == load_params(DEFAULT_PARAMS_FILE)
    extractor = make_extractor(params)
    settings = extractor.settings
    assert [float(v) for v in settings["resampledPixelSpacing"]] == [1.0, 1.0, 1.0]
    assert settings["normalize"] is True
    assert settings["binWidth"] == 5
    assert extractor.enabledImagetypes == {"Original": {}}
    assert set(extractor.enabledFeatures) == set(CLASSES)


def test_params_errors_name_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_params(missing)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- binWidth\n")
    with pytest.raises(ValueError, match="must hold a mapping, got list"):
        load_params(not_mapping)
    with pytest.raises(ValueError, match="Feature Class glcmx is not recognized"):
        make_extractor({"featureClass": {"glcmx": None}})
    with pytest.raises(ValueError, match="Key 'foo' was not defined"):
        make_extractor({"setting": {"foo": 1}})


def test_geometry_from_affine_matches_nibabel_convention() -> None:
    affine = np.array([[-1.0, 0, 0, 90.0], [0, 1.2, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]])
    grid = as_geometry(affine)
    assert grid.spacing == (1.0, 1.2, 2.0)
    assert grid.origin == (-90.0, 126.0, -72.0)  # RAS -> LPS
    assert grid.direction == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert grid.voxel_volume_mm3 == pytest.approx(2.4)
