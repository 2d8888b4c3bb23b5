"""Tests of the ``quality`` analyzer: a normal phantom passes, planted faults are flagged."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pluggy
import pytest
from scipy import ndimage

from plugins import hookspecs
from plugins.builtin.quality import QualityAnalyzer, QualityResult
from plugins.settings import AnalyzerSettings
from tests.analyzer_phantoms import make_context, phantom, stack_images

T1N, T1C, T2W, T2F = range(4)


def _check(**kwargs: Any) -> QualityResult:
    case, _ = phantom(False)
    result = QualityAnalyzer().analyze(make_context(case, analyzer=QualityAnalyzer(), **kwargs))
    assert isinstance(result, QualityResult)
    return result


def _codes(result: QualityResult, severity: str | None = None) -> set[str]:
    return {f.code for f in result.flags if severity is None or f.severity == severity}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    case, _ = phantom(False)
    return stack_images(case.images)


@pytest.fixture(scope="module")
def normal() -> QualityResult:
    return _check()


def test_normal_phantom_has_no_warning_or_error(normal: QualityResult) -> None:
    assert normal.passed
    assert _codes(normal, "error") == set() and _codes(normal, "warning") == set()
    assert _codes(normal) == {"tta_not_available"}
    m = normal.measurements
    assert 1200 < m.brain_volume_ml < 1700
    assert m.csf_ratio["t2w"] > 1.5 and m.csf_ratio["t2f"] < 0.5 and m.csf_ratio["t1c"] < 0.5
    assert m.et_enhancement_ratio is not None and m.et_enhancement_ratio > 1.5
    assert max(m.modality_correlation.values()) < 0.99
    assert m.brain_border_faces == 0 and m.tumour_border_faces == 0
    assert normal.counts == {"error": 0, "warning": 0, "info": 1}


def test_swapped_t2w_and_t2f_are_flagged(images: np.ndarray) -> None:
    swapped = images[[T1N, T1C, T2F, T2W]]
    result = _check(images=swapped)
    assert not result.passed
    assert "t2w_t2f_swapped" in _codes(result, "error")
    assert result.flags[0].severity == "error"


def test_t1c_copied_from_t1n_is_flagged(images: np.ndarray) -> None:
    copied = images[[T1N, T1N, T2W, T2F]]
    result = _check(images=copied)
    assert {"duplicate_modalities", "no_enhancement_in_et"} <= _codes(result, "error")
    duplicate = next(f for f in result.flags if f.code == "duplicate_modalities")
    assert "t1n and t1c" in duplicate.message
    assert result.measurements.et_enhancement_ratio == pytest.approx(1.0, abs=0.02)


def test_t1c_scaled_copy_is_still_flagged(images: np.ndarray) -> None:
    scaled = images.copy()
    scaled[T1C] = 3.7 * images[T1N]
    assert "no_enhancement_in_et" in _codes(_check(images=scaled), "error")


def test_brain_filling_the_whole_image_is_flagged(images: np.ndarray) -> None:
    """An unstripped / box input: every voxel of the field of view is 'brain'."""
    filled = np.where(images > 0, images, np.float32(5.0))
    result = _check(images=filled)
    assert {
        "brain_fills_field_of_view",
        "brain_box_shaped",
        "brain_volume_implausible",
    } <= _codes(result, "error")
    assert result.measurements.brain_border_faces == 6


def test_field_of_view_cutting_the_tumour_is_flagged(images: np.ndarray) -> None:
    case, _ = phantom(False)
    x_centre = round(case.truth["centre_voxel"][0])
    cut = (slice(None), slice(0, x_centre))
    cropped = np.ascontiguousarray(images[cut])
    seg = np.ascontiguousarray(case.segmentation[cut[1:]])
    result = _check(images=cropped, segmentation=seg)
    assert {"tumour_touches_border", "brain_touches_border"} <= _codes(result, "warning")
    assert result.measurements.tumour_border_faces == 1


def test_slab_is_flagged(images: np.ndarray) -> None:
    slab = images.copy()
    slab[:, :, :, :60] = 0
    slab[:, :, :, 100:] = 0
    assert "brain_slab" in _codes(_check(images=slab), "error")


def test_label_faults() -> None:
    case, _ = phantom(False)
    seg = case.segmentation.copy()
    seg[5:10, 5:10, 5:10] = 2  # tumour in the empty background
    seg[120, 120, 77] = 7
    result = _check(segmentation=seg)
    assert "unknown_labels" in _codes(result, "error")
    outside = result.measurements.wt_outside_brain_fraction
    assert outside is not None and 0.005 < outside < 0.05
    assert "labels_outside_brain" in _codes(result, "warning")
    seg[0:40, 0:40, 0:40] = 2  # now > 5 % of the tumour
    assert "labels_outside_brain" in _codes(_check(segmentation=seg), "error")


def test_enhancement_specks_break_the_core_nesting() -> None:
    case, _ = phantom(False)
    seg = case.segmentation.copy()
    # single ET voxels on a 2-voxel lattice of the edema, away from the core: no two touch
    lattice = np.zeros(seg.shape, dtype=bool)
    lattice[::2, ::2, ::2] = True
    cube = np.ones((3, 3, 3), dtype=bool)
    core = ndimage.binary_dilation(np.isin(seg, (1, 3)), structure=cube)
    specks = lattice & (seg == 2) & ~core
    assert specks.sum() > 0.15 * (seg == 3).sum()  # > 13 % of the new ET
    seg[specks] = 3
    result = _check(segmentation=seg, options={"max_et_island_fraction": 0.1})
    assert "et_islands" in _codes(result, "warning")
    fraction = result.measurements.et_island_fraction
    assert fraction is not None and fraction == pytest.approx(
        specks.sum() / (seg == 3).sum(), rel=1e-3
    )
    clean = _check(options={"max_et_island_fraction": 0.1})
    assert clean.measurements.et_island_fraction == 0.0  # the phantom's rim is one core
    assert "et_islands" not in _codes(clean)


def test_tta_disagreement_per_region() -> None:
    case, _ = phantom(False)
    low = np.full(case.segmentation.shape, 0.05, dtype=np.float16)
    calm = _check(tta_disagreement=low)
    assert calm.measurements.mean_tta_disagreement == pytest.approx(
        {"WT": 0.05, "TC": 0.05, "ET": 0.05}, abs=1e-3
    )
    assert _codes(calm) == set()
    high = low.copy()
    high[case.segmentation == 3] = 0.8
    noisy = _check(tta_disagreement=high)
    flag = next(f for f in noisy.flags if f.code == "tta_disagreement_high")
    assert flag.severity == "warning" and "ET" in flag.message
    assert noisy.measurements.mean_tta_disagreement is not None
    assert noisy.measurements.mean_tta_disagreement["ET"] == pytest.approx(0.8, abs=1e-2)
    relaxed = _check(tta_disagreement=high, options={"max_mean_disagreement": 0.9})
    assert "tta_disagreement_high" not in _codes(relaxed)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match=r"brain_ml_warning.*\(2000.0, 900.0\)"):
        _check(options={"brain_ml_warning": [2000.0, 900.0]})
    with pytest.raises(ValueError, match=r"(?s)'quality'.*shade"):
        _check(options={"shade": 1})


def test_hook_registers_the_analyzer() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(importlib.import_module("plugins.builtin.quality"))
    analyzers = [
        a for group in manager.hook.register_analyzers(settings=AnalyzerSettings()) for a in group
    ]
    assert [a.name for a in analyzers] == ["quality"]
