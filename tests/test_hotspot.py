"""Tests of the ``hotspot`` (biopsy target) analyzer.

The unwarped phantom carries a planted high-grade focus (a strongly enhancing, heterogeneous
nodule in the enhancing rim, ``truth["focus"]``). Probabilities are the truth labels one-hot
encoded and smoothed, so the tests do not depend on the trained model.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pluggy
import pytest
from scipy import ndimage

from cerebrascan.atlas.mapping import structure_atlas_for
from plugins import hookspecs
from plugins.builtin.hotspot import HotspotAnalyzer, HotspotResult, pick_targets
from plugins.settings import AnalyzerSettings
from tests.analyzer_phantoms import (
    OFF_GRID_AFFINE,
    RecordingSink,
    make_context,
    phantom,
    probabilities_from_labels,
    resampled_warped,
)


def _mm(voxel: Any, affine: np.ndarray) -> np.ndarray:
    point: np.ndarray = (affine @ np.append(np.asarray(voxel, dtype=np.float64), 1.0))[:3]
    return point


@pytest.fixture(scope="module")
def probabilities() -> np.ndarray:
    case, _ = phantom(False)
    return probabilities_from_labels(case.segmentation)


def _run(
    probabilities: np.ndarray, segmentation: np.ndarray | None = None, **options: Any
) -> tuple[HotspotResult, RecordingSink]:
    case, _ = phantom(False)
    sink = RecordingSink()
    context = make_context(
        case,
        segmentation=segmentation,
        probabilities=probabilities,
        options=options,
        sink=sink,
        analyzer=HotspotAnalyzer(),
    )
    result = HotspotAnalyzer().analyze(context)
    assert isinstance(result, HotspotResult)
    return result, sink


@pytest.fixture(scope="module")
def default(probabilities: np.ndarray) -> tuple[HotspotResult, RecordingSink]:
    return _run(probabilities)


def test_planted_focus_is_in_the_truth() -> None:
    case, _ = phantom(False)
    focus = case.truth["focus"]
    centre = tuple(focus["centre_voxel"])
    assert case.segmentation[centre] == 3
    assert focus["voxels"] > 30
    # the focus enhances more than the rest of the enhancing tumour
    t1c = case.images["t1c"]
    grid: tuple[np.ndarray, ...] = np.indices(case.segmentation.shape, sparse=True)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= 4
    rest = (case.segmentation == 3) & ~ndimage.binary_dilation(ball, iterations=4)
    assert np.median(t1c[ball]) > 1.3 * np.median(t1c[rest])


def test_first_target_within_5mm_of_the_focus(default: tuple[HotspotResult, RecordingSink]) -> None:
    result, _ = default
    case, _ = phantom(False)
    assert result.region == "TC" and result.targets
    first = result.targets[0]
    distance = np.linalg.norm(
        _mm(first.voxel, case.affine) - _mm(case.truth["focus"]["centre_voxel"], case.affine)
    )
    assert distance <= 5.0
    assert first.rank == 1 and first.label == 3
    assert first.ras_mm == pytest.approx(_mm(first.voxel, case.affine).tolist())
    assert first.enhancement_ratio > 1.5 and first.et_probability > 0.5
    assert result.atlas_registered is False


def test_targets_are_separated_inside_the_core_and_away_from_structures(
    default: tuple[HotspotResult, RecordingSink],
) -> None:
    result, _ = default
    case, _ = phantom(False)
    targets = result.targets
    assert 1 <= len(targets) <= result.k == 3
    scores = [t.score for t in targets]
    assert scores == sorted(scores, reverse=True)
    for i, a in enumerate(targets):
        assert case.segmentation[tuple(a.voxel)] in (1, 3)
        for b in targets[i + 1 :]:
            gap = np.linalg.norm(_mm(a.voxel, case.affine) - _mm(b.voxel, case.affine))
            assert gap >= result.min_separation_mm
    atlas = structure_atlas_for(case.images["t1n"], case.affine).atlas
    for name in result.excluded_structures:
        voxels = np.argwhere(atlas.mask(name))
        for target in targets:  # brute force, independent of the k-d trees
            gap = np.linalg.norm(voxels - np.asarray(target.voxel), axis=1).min()
            assert gap >= result.exclusion_margin_mm, name


def test_heatmap_artefact(default: tuple[HotspotResult, RecordingSink]) -> None:
    result, sink = default
    case, _ = phantom(False)
    heat = sink.arrays["hotspot_heatmap"]
    assert heat.dtype == np.float32 and heat.shape == case.segmentation.shape
    core = np.isin(case.segmentation, (1, 3))
    assert not heat[~core].any()
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert np.linalg.norm(np.subtract(peak, case.truth["focus"]["centre_voxel"])) <= 5.0
    assert result.heatmap == "/studies/test/artefacts/hotspot_heatmap"


def test_other_grid_target_within_5mm_of_the_focus() -> None:
    """Warped anatomy on a 1.2 x 1.2 x 1.5 mm grid: the atlas is registered (once per study,
    shared with nogo) and the target is still found in scanner space."""
    case, _ = phantom(True)
    images, segmentation = resampled_warped()
    context = make_context(
        case,
        images=images,
        segmentation=segmentation,
        probabilities=probabilities_from_labels(segmentation),
        affine=OFF_GRID_AFFINE,
        analyzer=HotspotAnalyzer(),
    )
    result = HotspotAnalyzer().analyze(context)
    assert isinstance(result, HotspotResult)
    assert result.atlas_registered is True and result.targets
    first = np.asarray(result.targets[0].ras_mm)
    focus = _mm(case.truth["focus"]["centre_voxel"], case.affine)
    assert np.linalg.norm(first - focus) <= 5.0
    assert first == pytest.approx(_mm(result.targets[0].voxel, OFF_GRID_AFFINE), abs=0.01)


def test_excluding_the_focus_structure_moves_the_target(probabilities: np.ndarray) -> None:
    case, _ = phantom(False)
    centre = case.truth["focus"]["centre_voxel"]
    atlas = structure_atlas_for(case.images["t1n"], case.affine).atlas
    assert atlas.mask("insula")[tuple(centre)]  # the focus lies in the insula mask
    result, _ = _run(probabilities, exclude_structures=["insula"], exclusion_margin_mm=3.0)
    assert result.excluded_fraction > 0.0
    insula = np.argwhere(atlas.mask("insula"))
    for target in result.targets:
        assert np.linalg.norm(insula - np.asarray(target.voxel), axis=1).min() >= 3.0
        assert target.nearest_excluded_structure == "insula"
        assert target.nearest_excluded_mm is not None and target.nearest_excluded_mm >= 3.0


def test_k_and_separation_options(probabilities: np.ndarray) -> None:
    one, _ = _run(probabilities, k=1)
    assert len(one.targets) == 1
    loose, _ = _run(probabilities, k=20, min_separation_mm=0.0, exclude_structures=[])
    strict, _ = _run(probabilities, k=20, min_separation_mm=10.0, exclude_structures=[])
    # every local maximum of the heatmap is a candidate; separation only removes some
    assert len(loose.targets) > len(strict.targets) >= 2
    assert any("targets found" in note for note in strict.notes)
    assert loose.atlas_registered is None
    assert any("No structures excluded" in note for note in loose.notes)


def test_whole_tumour_is_searched_without_a_core(probabilities: np.ndarray) -> None:
    case, _ = phantom(False)
    edema_only = np.where(case.segmentation > 0, 2, 0).astype(np.uint8)
    result, _ = _run(probabilities, segmentation=edema_only, exclude_structures=[])
    assert result.region == "WT" and result.targets
    assert all(edema_only[tuple(t.voxel)] == 2 for t in result.targets)


def test_no_tumour_gives_no_targets(probabilities: np.ndarray) -> None:
    case, _ = phantom(False)
    empty = np.zeros(case.segmentation.shape, dtype=np.uint8)
    result, sink = _run(probabilities, segmentation=empty)
    assert result.region == "none" and result.targets == []
    assert not sink.arrays["hotspot_heatmap"].any()


def test_missing_probabilities_and_bad_options_are_named(probabilities: np.ndarray) -> None:
    case, _ = phantom(False)
    with pytest.raises(ValueError, match=r"probabilities must have shape \(4, 240, 240, 155\)"):
        HotspotAnalyzer().analyze(make_context(case, analyzer=HotspotAnalyzer()))
    with pytest.raises(ValueError, match="pons"):
        _run(probabilities, exclude_structures=["pons"])
    with pytest.raises(ValueError, match=r"k\n.*less than or equal to 20"):
        _run(probabilities, k=50)


def test_pick_targets_greedy_separation() -> None:
    heat = np.zeros((20, 5, 5), dtype=np.float32)
    heat[2, 2, 2], heat[5, 2, 2], heat[15, 2, 2] = 0.9, 0.8, 0.5
    allowed = np.ones(heat.shape, dtype=bool)
    picks = pick_targets(heat, allowed, np.diag([2.0, 1.0, 1.0]), 3, 10.0)
    # (5, 2, 2) is 6 mm from the best peak on 2 mm voxels: suppressed
    assert picks == [(2, 2, 2), (15, 2, 2)]
    allowed[2, 2, 2] = False
    assert pick_targets(heat, allowed, np.eye(3), 1, 10.0) == [(5, 2, 2)]


def test_hook_registers_the_analyzer() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(importlib.import_module("plugins.builtin.hotspot"))
    analyzers = [
        a for group in manager.hook.register_analyzers(settings=AnalyzerSettings()) for a in group
    ]
    assert [a.name for a in analyzers] == ["hotspot"]
