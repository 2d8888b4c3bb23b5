"""The project's BraTS metrics against the official ``brats-evaluation`` package (panoptica).

The package runs in its own venv (``make brats-metrics``, a prerequisite of ``make test``).
Planted perturbations of a phantom's reference labels are scored by both: global Dice must agree
within 1e-6 and HD95 within 0.01 mm; the package's lesion-wise figures are recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.inputs.case_folder import load_nifti_image, modality_path
from cerebrascan.training.evaluate import official_card_section, official_case_columns
from cerebrascan.training.metrics import REGIONS, region_metrics
from cerebrascan.training.official_metrics import (
    MAKE_TARGET,
    LabelPair,
    OfficialMetricsError,
    official_region_metrics,
)
from cerebrascan.training.params import EvaluateParams

PYTHON = EvaluateParams().official_metrics_python
Labels = npt.NDArray[np.uint8]


def _tumour_crop(case: Path, margin: int = 10) -> tuple[Labels, npt.NDArray[np.float64]]:
    """The phantom's reference labels cropped to the tumour plus a margin (small and fast)."""
    image = load_nifti_image(modality_path(case, "seg"))
    labels = np.asarray(image.dataobj, dtype=np.uint8)
    found = np.argwhere(labels > 0)
    lo = np.maximum(found.min(axis=0) - margin, 0)
    hi = np.minimum(found.max(axis=0) + margin + 1, labels.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return labels[box].copy(), np.asarray(image.affine, dtype=np.float64)


def _perturbations(reference: Labels) -> dict[str, Labels]:
    """Planted errors of the kinds a network makes; each is a different HD95 situation."""
    shifted = np.roll(reference, 2, axis=0)
    eroded_et = reference.copy()
    et = reference == 3
    eroded_et[et & ~ndimage.binary_erosion(et)] = 1  # a thinner enhancing rim
    grown = reference.copy()
    grown[(reference == 0) & ndimage.binary_dilation(reference > 0, iterations=2)] = 2
    false_blob = reference.copy()
    false_blob[1:5, 1:5, 1:4] = 2  # 48 voxels of oedema far from the tumour: one false lesion
    no_core = reference.copy()
    no_core[reference == 1] = 2
    speckled = reference.copy()
    rng = np.random.default_rng(7)
    flips = rng.random(reference.shape) < 0.02
    speckled[flips & (reference > 0)] = 0
    no_et = reference.copy()
    no_et[reference == 3] = 1  # the enhancing tumour missed entirely: one empty ET mask
    return {
        "ET-missed": no_et,
        "shift-2-voxels": shifted,
        "eroded-ET": eroded_et,
        "grown-WT": grown,
        "false-lesion": false_blob,
        "core-missed": no_core,
        "speckle": speckled,
    }


@pytest.fixture(scope="module")
def compared(phantom_case: Path) -> dict[str, dict[str, dict[str, dict[str, float | None]]]]:
    """Official and project figures of every planted perturbation, on 1 mm and thick slices."""
    reference, affine = _tumour_crop(phantom_case)
    assert spacing_from_affine(affine) == pytest.approx((1.0, 1.0, 1.0))
    thick = affine.copy()
    thick[:3, 2] *= 2.5  # 2.5 mm along voxel axis 2
    pairs = [
        LabelPair(name, prediction, reference, affine)
        for name, prediction in _perturbations(reference).items()
    ]
    pairs.append(LabelPair("thick-shift", np.roll(reference, 2, axis=2), reference, thick))
    without_et = np.where(reference == 3, 1, reference).astype(np.uint8)
    pairs.append(LabelPair("no-ET-anywhere", without_et, without_et, affine))
    official = official_region_metrics(pairs, PYTHON)
    ours = {
        pair.case: region_metrics(pair.prediction, pair.reference, spacing_from_affine(pair.affine))
        for pair in pairs
    }
    in_voxels = {
        pair.case: region_metrics(pair.prediction, pair.reference, (1.0, 1.0, 1.0))
        for pair in pairs
    }
    return {"official": official, "ours": ours, "in_voxels": in_voxels}  # type: ignore[dict-item]


def test_global_dice_and_hd95_equal_the_official_package(compared: dict[str, Any]) -> None:
    official, ours = compared["official"], compared["ours"]
    isotropic = [case for case in ours if case not in ("thick-shift", "no-ET-anywhere")]
    assert len(isotropic) == 7
    hd95_seen = set()
    for case in isotropic:
        for region in REGIONS:
            theirs, mine = official[case][region], ours[case][region]
            assert mine["dice"] == pytest.approx(theirs["dice"], abs=1e-6), (case, region)
            assert mine["hd95_mm"] == pytest.approx(theirs["hd95_mm"], abs=0.01), (case, region)
            hd95_seen.add(round(mine["hd95_mm"], 2))
    # the perturbations are not all alike: the comparison covers several HD95 values, and
    # one empty mask gets the same 373 mm penalty from both
    assert len(hd95_seen) >= 4, hd95_seen
    assert official["ET-missed"]["ET"]["hd95_mm"] == ours["ET-missed"]["ET"]["hd95_mm"] == 373.0
    assert official["ET-missed"]["ET"]["lesion_dice"] == 0.0


def test_a_region_empty_on_both_sides_is_undefined_officially(compared: dict[str, Any]) -> None:
    # BraTS convention here (Dice 1, HD95 0); the package leaves it undefined (NaN -> None), so
    # evaluate's official means skip such cases while the project's count them (docs/training.md)
    official, ours = compared["official"], compared["ours"]
    assert ours["no-ET-anywhere"]["ET"] == {"dice": 1.0, "hd95_mm": 0.0}
    assert official["no-ET-anywhere"]["ET"]["dice"] is None
    assert official["no-ET-anywhere"]["ET"]["hd95_mm"] is None
    assert official["no-ET-anywhere"]["WT"]["dice"] == pytest.approx(1.0)


def test_the_official_global_hd95_ignores_voxel_spacing(compared: dict[str, Any]) -> None:
    # panoptica 2.1.7 computes global metrics without the voxel spacing (docs/training.md):
    # on a thick-slice grid its "mm" are voxels; ours stay mm. If this fails, the package
    # changed: re-check the agreement on anisotropic grids.
    official, ours, in_voxels = compared["official"], compared["ours"], compared["in_voxels"]
    for region in REGIONS:
        theirs = official["thick-shift"][region]
        assert theirs["dice"] == pytest.approx(ours["thick-shift"][region]["dice"], abs=1e-6)
        assert theirs["hd95_mm"] == pytest.approx(
            in_voxels["thick-shift"][region]["hd95_mm"], abs=0.01
        )
        assert ours["thick-shift"][region]["hd95_mm"] > theirs["hd95_mm"] + 0.5


def test_lesion_wise_figures_of_the_package_are_recorded(compared: dict[str, Any]) -> None:
    official, ours = compared["official"], compared["ours"]
    blob = official["false-lesion"]["WT"]
    # one false 48-voxel lesion barely moves global Dice but costs the lesion-wise figure
    assert blob["lesion_tp"] == 1 and blob["lesion_fp"] == 1 and blob["lesion_fn"] == 0
    assert ours["false-lesion"]["WT"]["dice"] > 0.99
    assert blob["lesion_dice"] == pytest.approx(blob["lesion_matched_dice"] * 2 / 3, abs=1e-6)
    assert blob["lesion_matched_dice"] == pytest.approx(1.0, abs=1e-6)
    # the perturbations without extra lesions keep lesion-wise equal to global Dice
    shifted = official["shift-2-voxels"]["TC"]
    assert shifted["lesion_fp"] == 0 and shifted["lesion_dice"] == pytest.approx(shifted["dice"])
    # as evaluate records them, and as the model card shows them
    columns = official_case_columns(official["false-lesion"])
    assert columns["WT_lesion_fp"] == 1 and columns["WT_official_dice"] == blob["dice"]
    card = official_card_section({k: v for k, v in columns.items()})
    assert "lesion-wise Dice" in card and f"{blob['lesion_dice']:.3f}" in card


def test_a_missing_environment_names_the_make_target(tmp_path: Path) -> None:
    pairs = [
        LabelPair("c", np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.eye(4))
    ]
    with pytest.raises(OfficialMetricsError, match=MAKE_TARGET) as raised:
        official_region_metrics(pairs, tmp_path / "no-venv" / "bin" / "python")
    assert str(tmp_path / "no-venv") in str(raised.value)
