"""The ``delta`` analyzer on synthetic phantom series with known truth.

Five series (2 mm grids, so that they are cheap) cover between them every path of the rules:
complete response, partial response, stable disease (by growth and by shrinkage short of a
partial response) and progression (by growth over the baseline, by growth over a nadir below
the baseline, by reappearance and by a new lesion); each visit has another head position.
Series are rendered at 1 mm before they are downsampled, which costs most of this module's
time: a path needs one series, not one series per category. The analyzer runs through the
real host with the phantoms' reference labels as the segmentation, so the checks measure the
analyzer (registration, resampling, growth maths, categories), not the segmentation model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.imaging.regions import volumes_ml
from cerebrascan.longitudinal.response import (
    classify_response,
    growth_figures,
    near_mask,
    new_lesions,
)
from cerebrascan.longitudinal.settings import LongitudinalSettings
from cerebrascan.phantoms.series import (
    PhantomVisit,
    SeriesPlan,
    expected_responses,
    exponential_factors,
    generate_series,
    true_current_to_prior_ras,
)
from plugins.analyzer import PatientHistory, PriorStudy
from plugins.host import AnalyzerHost, StudyInputs
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
MODEL = ("phantom-model", "1")

PLANS: dict[str, SeriesPlan] = {
    # progression by growth over the baseline (the nadir); exponential: the doubling time
    "growth": SeriesPlan(
        seed=11, visit_days=(0, 60), volume_factors=exponential_factors(0.012, (0, 60))
    ),
    # stable by growth short of progression
    "stable": SeriesPlan(seed=13, visit_days=(0, 90), volume_factors=(1.0, 1.1)),
    # stable by shrinkage short of a partial response (visit 1); partial response overall
    # while stable against the previous visit (2); progression by growth over the nadir while
    # still below the baseline (3)
    "shrink_then_regrow": SeriesPlan(
        seed=17, visit_days=(0, 60, 120, 180), volume_factors=(1.0, 0.5, 0.2, 0.5)
    ),
    # progression by a new lesion alone
    "new_lesion": SeriesPlan(
        seed=18, visit_days=(0, 60), volume_factors=(1.0, 1.0), satellite_from_visit=1
    ),
    # complete response (1), then progression by reappearance (2)
    "recurrence": SeriesPlan(seed=20, visit_days=(0, 60, 120), volume_factors=(1.0, 0.0, 0.5)),
}
PLANS = {name: SeriesPlan(**{**plan.__dict__, "downsample": 2}) for name, plan in PLANS.items()}


def _history(
    visits: Sequence[PhantomVisit],
    current: int,
    criteria: LongitudinalSettings,
    *,
    model_versions: Sequence[str] | None = None,
) -> PatientHistory:
    """A history of the visits before ``current``, loaded from memory (the store's job)."""
    priors = []
    for index, visit in enumerate(visits[:current]):
        case = visit.case
        version = model_versions[index] if model_versions else MODEL[1]
        priors.append(
            PriorStudy(
                study_id=f"{index:032x}",
                study_date=visit.study_date,
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                model_name=MODEL[0],
                model_version=version,
                same_model=version == MODEL[1],
                analyzer_versions={},
                volumes_ml=volumes_ml(case.segmentation, spacing_from_affine(case.affine)),
                load_labels=functools.partial(lambda c: (c.segmentation, c.affine), case),
                load_reference_image=functools.partial(
                    lambda c: (c.images["t1n"] / c.images["t1n"].max() * 255.0, c.affine), case
                ),
            )
        )
    return PatientHistory(visits[current].study_date, tuple(priors), criteria)


def _run_delta(
    host: AnalyzerHost, visits: Sequence[PhantomVisit], current: int, history: PatientHistory
) -> tuple[dict[str, Any], MemoryArtefactSink]:
    case = visits[current].case
    sink = MemoryArtefactSink(shape=case.segmentation.shape)
    inputs = StudyInputs(
        study_id=f"{current:032x}",
        affine=case.affine,
        spacing_mm=spacing_from_affine(case.affine),
        modalities=MODALITIES,
        images=np.stack([case.images[m] for m in MODALITIES]),
        segmentation=case.segmentation,
        prior_studies=history,
    )
    outcome = host.run(inputs, artefacts=sink)["delta"]
    assert outcome.status == "ok", outcome.error
    assert outcome.result is not None
    return outcome.result, sink


@pytest.fixture(scope="session")
def delta_host() -> AnalyzerHost:
    """A host with only the built-in delta analyzer."""
    return AnalyzerHost(
        PluginSettings(entry_points=False), builtin_plugins=("plugins.builtin.delta",)
    )


@pytest.fixture(scope="session")
def growth_visits() -> list[PhantomVisit]:
    """The visits of the ``growth`` series (kept: other tests reuse them)."""
    return generate_series(PLANS["growth"], series_id="GROWTH")


@pytest.fixture(scope="session")
def series_runs(
    delta_host: AnalyzerHost, growth_visits: list[PhantomVisit]
) -> dict[str, list[dict[str, Any]]]:
    """Every series rendered and every follow-up visit analysed (once per session)."""
    criteria = LongitudinalSettings()
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, plan in PLANS.items():
        visits = (
            growth_visits
            if name == "growth"
            else generate_series(plan, series_id=name.upper().replace("_", "-"))
        )
        runs[name] = []
        for current in range(1, len(visits)):
            result, sink = _run_delta(
                delta_host, visits, current, _history(visits, current, criteria)
            )
            runs[name].append(
                {
                    "result": result,
                    "truth": visits[current].truth,
                    "prior_truth": visits[current - 1].truth,
                    "change_map": sink.arrays.get("change_map"),
                }
            )
    return runs


@pytest.mark.slow
def test_series_cover_every_category() -> None:
    categories = {
        response["overall"] for plan in PLANS.values() for response in expected_responses(plan)[1:]
    }
    assert categories == {"complete_response", "partial_response", "stable", "progression"}
    # every rule of the categories has a visit (a path per series, not a count of series)
    paths = set()
    for plan in PLANS.values():
        factors = plan.volume_factors
        for visit, response in enumerate(expected_responses(plan)[1:], start=1):
            nadir, current = min(factors[:visit]), factors[visit]
            if plan.satellite_from_visit == visit:
                paths.add("progression by a new lesion")
            elif response["overall"] == "progression" and nadir == 0:
                paths.add("progression by reappearance")
            elif response["overall"] == "progression" and nadir < 1.0:
                paths.add("progression over a nadir below the baseline")
            elif response["overall"] == "progression":
                paths.add("progression over the baseline")
            elif response["overall"] == "stable":
                paths.add("stable, grown" if current > 1.0 else "stable, shrunk")
            if response["overall"] != response["vs_previous"]:
                paths.add("overall differs from vs previous")
    assert paths == {
        "progression by a new lesion",
        "progression by reappearance",
        "progression over a nadir below the baseline",
        "progression over the baseline",
        "stable, grown",
        "stable, shrunk",
        "overall differs from vs previous",
    }


@pytest.mark.slow
def test_response_categories_match_the_design(series_runs: dict[str, list[dict[str, Any]]]) -> None:
    wrong = []
    for name, runs in series_runs.items():
        for run in runs:
            expected = run["truth"]["expected_response"]
            got = {
                "vs_previous": run["result"]["response_vs_previous"]["category"],
                "overall": run["result"]["response_overall"]["category"],
            }
            if got != expected:
                wrong.append((name, run["truth"]["visit"], expected, got))
    assert not wrong, wrong


@pytest.mark.slow
def test_growth_rates_within_5_percent_of_truth(
    series_runs: dict[str, list[dict[str, Any]]],
) -> None:
    for name, runs in series_runs.items():
        for run in runs:
            truth, prior = run["truth"], run["prior_truth"]
            days = truth["day"] - prior["day"]
            for region in ("ET", "TC", "WT"):
                true_rate = (truth["volumes_ml"][region] - prior["volumes_ml"][region]) / days
                delta = run["result"]["regions"][region]
                rate = delta["growth_rate_ml_per_day"]
                assert rate == pytest.approx(true_rate, rel=0.05, abs=1e-4), (name, region)
                # the prior's labels keep their volume through registration and resampling
                registered = delta["prior_registered_ml"]
                assert registered == pytest.approx(prior["volumes_ml"][region], rel=0.05, abs=0.05)
                # voxel bookkeeping: current = stable + new, registered prior = stable + resolved
                assert delta["stable_ml"] + delta["new_ml"] == pytest.approx(delta["current_ml"])
                assert delta["stable_ml"] + delta["resolved_ml"] == pytest.approx(registered)


@pytest.mark.slow
def test_doubling_time_of_exponential_growth(
    series_runs: dict[str, list[dict[str, Any]]],
) -> None:
    run = series_runs["growth"][0]
    truth, prior = run["truth"], run["prior_truth"]
    ratio = truth["volumes_ml"]["WT"] / prior["volumes_ml"]["WT"]
    expected = truth["day"] * math.log(2) / math.log(ratio)
    assert run["result"]["regions"]["WT"]["doubling_time_days"] == pytest.approx(expected)
    # the design's rate was 0.012/day: doubling in ~58 days (voxelisation moves it a little)
    assert expected == pytest.approx(math.log(2) / 0.012, rel=0.1)
    shrink = series_runs["shrink_then_regrow"][0]["result"]["regions"]["WT"]
    assert shrink["doubling_time_days"] is None and shrink["halving_time_days"] > 0


@pytest.mark.slow
def test_registration_error_at_most_1_mm(series_runs: dict[str, list[dict[str, Any]]]) -> None:
    worst = 0.0
    for runs in series_runs.values():
        for run in runs:
            truth, prior = run["truth"], run["prior_truth"]
            found = np.asarray(run["result"]["registration"]["current_to_prior_ras"])
            expected = true_current_to_prior_ras(truth, prior)
            affine = np.asarray(truth["affine"])
            shape = truth["shape"]
            # error over a grid of points filling the brain's box (every 4th voxel)
            grid = np.stack(
                np.meshgrid(*[np.arange(n // 5, 4 * n // 5, 4) for n in shape], indexing="ij"),
                axis=-1,
            ).reshape(-1, 3)
            points = affine @ np.c_[grid, np.ones(len(grid))].T
            error = np.linalg.norm((found @ points - expected @ points)[:3], axis=0)
            worst = max(worst, float(error.max()))
            # and the head moved between visits, so the registration had work to do
            assert np.abs(expected - np.eye(4)).max() > 0.01
    assert worst <= 1.0, f"worst registration error {worst:.3f} mm"


@pytest.mark.slow
def test_new_lesion_and_change_map(series_runs: dict[str, list[dict[str, Any]]]) -> None:
    run = series_runs["new_lesion"][0]
    assert len(run["result"]["new_lesions_ml"]) == 1
    assert run["result"]["new_lesions_ml"][0] >= LongitudinalSettings().new_lesion_min_ml
    change = run["change_map"]
    assert change is not None and set(np.unique(change)) <= {0, 1, 2, 3}
    assert np.count_nonzero(change == 1) > 0 and np.count_nonzero(change == 3) > 0
    for name in ("growth", "stable", "shrink_then_regrow", "recurrence"):
        assert series_runs[name][0]["result"]["new_lesions_ml"] == [], name
    resolved = series_runs["recurrence"][0]["change_map"]  # complete response
    assert np.count_nonzero(resolved == 2) > 0 and np.count_nonzero(resolved == 1) == 0


def test_no_history_no_prior_and_no_date_give_no_delta(delta_host: AnalyzerHost) -> None:
    labels = np.zeros((8, 8, 8), np.uint8)
    images = np.ones((4, 8, 8, 8), np.float32)
    criteria = LongitudinalSettings()
    for history, reason in (
        (None, "no patient history"),
        (PatientHistory(None, (), criteria, reason="the request has no patient_id"), "patient_id"),
        (PatientHistory(None, (), criteria, reason="no study_date"), "study_date"),
    ):
        inputs = StudyInputs(
            study_id="0" * 32,
            affine=np.eye(4),
            spacing_mm=(1.0, 1.0, 1.0),
            modalities=MODALITIES,
            images=images,
            segmentation=labels,
            prior_studies=history,
        )
        outcome = delta_host.run(inputs, artefacts=MemoryArtefactSink())["delta"]
        assert outcome.status == "ok", outcome.error
        assert outcome.result is not None
        assert outcome.result["computed"] is False
        assert reason in outcome.result["reason"]
        assert outcome.result["regions"] == {}


@pytest.mark.slow
def test_prior_from_another_model_version_is_flagged(
    delta_host: AnalyzerHost,
    growth_visits: list[PhantomVisit],
    series_runs: dict[str, list[dict[str, Any]]],
) -> None:
    visits = growth_visits
    history = _history(visits, 1, LongitudinalSettings(), model_versions=["0-old"])
    result, _ = _run_delta(delta_host, visits, 1, history)
    assert result["model_version_differs"] is True
    assert result["prior_model_version"] == f"{MODEL[0]}:0-old"
    assert any("not the current model" in w for w in result["warnings"])
    # the same visits with the prior from the current model (analysed in series_runs)
    same = series_runs["growth"][0]["result"]
    assert same["model_version_differs"] is False and same["warnings"] == []
    assert same["prior_model_version"] == f"{MODEL[0]}:{MODEL[1]}"


def test_thresholds_come_from_settings() -> None:
    strict = LongitudinalSettings(progression_change=0.2, partial_response_change=-0.3)
    default = LongitudinalSettings()
    # +30 % vs nadir: stable by default, progression under the stricter setting
    assert (
        classify_response(
            1.3, baseline_ml=1.0, nadir_ml=1.0, new_lesion=False, criteria=default
        ).category
        == "stable"
    )
    assert (
        classify_response(
            1.3, baseline_ml=1.0, nadir_ml=1.0, new_lesion=False, criteria=strict
        ).category
        == "progression"
    )
    assert (
        classify_response(
            0.6, baseline_ml=1.0, nadir_ml=1.0, new_lesion=False, criteria=strict
        ).category
        == "partial_response"
    )
    assert (
        classify_response(
            0.0, baseline_ml=1.0, nadir_ml=0.5, new_lesion=False, criteria=default
        ).category
        == "complete_response"
    )
    # growth over the nadir is progression even while below baseline
    assert (
        classify_response(
            0.5, baseline_ml=1.0, nadir_ml=0.3, new_lesion=False, criteria=default
        ).category
        == "progression"
    )
    assert (
        classify_response(
            0.2, baseline_ml=1.0, nadir_ml=0.2, new_lesion=True, criteria=default
        ).category
        == "progression"
    )


def test_growth_figures() -> None:
    figures = growth_figures(10.0, 20.0, 30.0)
    assert figures.absolute_change_ml == 10.0 and figures.relative_change == pytest.approx(1.0)
    assert figures.growth_rate_ml_per_day == pytest.approx(1 / 3)
    assert figures.doubling_time_days == pytest.approx(30.0) and figures.halving_time_days is None
    shrink = growth_figures(20.0, 5.0, 10.0)
    assert shrink.halving_time_days == pytest.approx(5.0) and shrink.doubling_time_days is None
    assert growth_figures(0.0, 5.0, 10.0).relative_change is None
    assert growth_figures(5.0, 5.0, 0.0).growth_rate_ml_per_day is None


def test_new_lesions_ignore_growth_next_to_the_prior() -> None:
    prior = np.zeros((40, 40, 40), bool)
    prior[5:15, 5:15, 5:15] = True
    current = np.zeros_like(prior)
    current[4:17, 4:17, 4:17] = True  # grown
    current[28:36, 28:36, 28:36] = True  # far away: new, 0.512 mL
    current[28:30, 5:7, 5:7] = True  # far but tiny: ignored
    found = new_lesions(prior, current, (1.0, 1.0, 1.0), margin_mm=3.0, min_ml=0.5)
    assert found == [pytest.approx(0.512)]


def test_near_mask_equals_the_whole_grid_distance_transform() -> None:
    """The padded-box distance transform gives the whole grid's answer, voxel for voxel."""
    rng = np.random.default_rng(5)
    for spacing, distance in (((1.0, 1.0, 1.0), 5.0), ((0.9, 1.3, 2.5), 3.0), ((2, 2, 2), 0.0)):
        mask = np.zeros((48, 40, 36), bool)
        mask[20:30, 10:18, 12:20] = rng.random((10, 8, 8)) > 0.6
        mask[1, 38, 2] = True  # a far voxel near the grid's edge
        whole = ndimage.distance_transform_edt(~mask, sampling=spacing) <= distance
        np.testing.assert_array_equal(near_mask(mask, spacing, distance), whole)
    assert not near_mask(np.zeros((4, 4, 4), bool), (1.0, 1.0, 1.0), 3.0).any()
    with pytest.raises(ValueError, match="-1"):
        near_mask(mask, (1.0, 1.0, 1.0), -1.0)


def test_downsampled_labels_are_the_block_majority() -> None:
    """The series' 2 mm labels: each 2x2x2 block's majority, ties to the higher label."""
    from cerebrascan.phantoms.generator import PhantomCase
    from cerebrascan.phantoms.series import _downsample_case

    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, (21, 16, 10)).astype(np.uint8)
    labels[:8] = 0
    labels[:, :3] = 2
    case = PhantomCase(
        "BLOCKS", {"t1n": rng.random(labels.shape, np.float32)}, labels, np.eye(4), {}
    )
    small = _downsample_case(case)
    blocks = labels[:20].reshape(10, 2, 8, 2, 5, 2).transpose(0, 2, 4, 1, 3, 5).reshape(10, 8, 5, 8)
    counts = np.stack([(blocks == k).sum(axis=-1) for k in range(4)], axis=-1)
    expected = 3 - np.argmax(counts[..., ::-1], axis=-1)
    np.testing.assert_array_equal(small.segmentation, expected)
    assert small.images["t1n"].shape == (10, 8, 5)


def test_invalid_series_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="visit_days"):
        SeriesPlan(seed=1, visit_days=(0, 30, 20), volume_factors=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="volume_factors"):
        SeriesPlan(seed=1, visit_days=(0, 30), volume_factors=(0.5, 1.0))
    with pytest.raises(ValueError, match="ambiguous"):
        expected_responses(SeriesPlan(seed=1, visit_days=(0, 30), volume_factors=(1.0, 1.4)))


def test_generator_hook_needs_an_unwarped_anatomy() -> None:
    from cerebrascan.phantoms.generator import PhantomParams, generate_case_with_anatomy

    labels = np.zeros((240, 240, 155), np.uint8)
    with pytest.raises(ValueError, match="random_warp=False"):
        generate_case_with_anatomy(1, "HOOK", PhantomParams(), tumour_labels=labels)


@pytest.mark.slow
def test_phantom_series_cli_writes_visits_and_truth(tmp_path: Any) -> None:
    import json

    from click.testing import CliRunner

    from cerebrascan.cli import main

    out = tmp_path / "series"
    args = ["phantom-series", "--out", str(out), "--seed", "3", "--days", "0,30"]
    result = CliRunner().invoke(main, [*args, "--factors", "1,2", "--downsample", "2"])
    assert result.exit_code == 0, result.output
    series = json.loads((out / "series.json").read_text())
    assert [v["study_date"] for v in series["visits"]] == ["2025-01-06", "2025-02-05"]
    assert series["visits"][1]["expected_response"]["overall"] == "progression"
    ratio = series["visits"][1]["volumes_ml"]["WT"] / series["visits"][0]["volumes_ml"]["WT"]
    assert ratio == pytest.approx(2.0, rel=0.1)
    for visit in series["visits"]:
        assert (out / visit["folder"] / f"{visit['folder']}-t1n.nii.gz").is_file()
    ambiguous = CliRunner().invoke(main, [*args, "--factors", "1,1.4"])
    assert ambiguous.exit_code != 0 and "ambiguous" in ambiguous.output
