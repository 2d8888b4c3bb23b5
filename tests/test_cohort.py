"""Tumour-type phantoms and the classifier cohorts: sites, phenotypes, labels, determinism, and
the default phantoms left exactly as they were."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cerebrascan.atlas.mapping import structure_atlas_for
from cerebrascan.classifiers.cohort import CohortSpec, sample_cohort, task_target
from cerebrascan.classifiers.cohort_files import read_cohort, write_cohort_truth
from cerebrascan.classifiers.features import location_features
from cerebrascan.phantoms import PhantomCase, PhantomParams, case_seed, generate_case
from cerebrascan.phantoms.generator import sample_case_params
from cerebrascan.phantoms.tumour_types import ALL_TUMOUR_TYPES, TUMOUR_TYPES, draw_diagnosis

#: SHA-256 of the default generator's first training case (``dvc.lock`` pins the same bytes via
#: data/phantoms): the tumour types are opt-in and must not change the default phantoms.
DEFAULT_CASE_SEGMENTATION_SHA256 = (
    "6d25167085aee5607b1ba0c20da9fc05a0dbea7627fa6eb644c5b6318ce5eaa3"
)
#: Its images are compared by profile (the sum over the other two axes, per axis and modality)
#: within PROFILE_TOLERANCE x the profile's largest value, not by hash: the anatomy's tissue mix
#: goes through BLAS, and OpenBLAS's SkylakeX kernels (an AVX-512 AMD machine) round the last
#: bit of ~1 % of t2w / t2f voxels differently from its Haswell / Zen kernels (at most 3e-7
#: relative per voxel; 6e-10 of a profile). One voxel changed by 1 % moves a profile by 1.5e-6;
#: another case differs by > 0.2.
DEFAULT_CASE_PROFILES = Path(__file__).parent / "data" / "default_phantom_profiles.json"
PROFILE_TOLERANCE = 1e-7
#: ... and of its truth record with every float rounded to 6 significant digits: on an AVX2
#: machine the full-precision record hashed differently from cpu2's (AVX-512) while the images
#: were bit-identical: float reductions over arrays may round their last bits differently.
DEFAULT_CASE_TRUTH_SHA256 = "3e7e86ecea5343d106e68a0c8378d416a30b923ebf2a8330d0c90b83c8cab630"
SEED = 11


def _rounded(value: object) -> object:
    """``value`` with every float rounded to 6 significant digits (lists and dicts walked)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _profile_mismatch(image: np.ndarray, profiles: list[list[float]]) -> float:
    """Largest difference between ``image``'s axis profiles and ``profiles``, relative to each
    profile's largest value."""
    values = image.astype(np.float64)
    ours = [values.sum(axis=(1, 2)), values.sum(axis=(0, 2)), values.sum(axis=(0, 1))]
    return max(
        float(np.max(np.abs(mine - np.asarray(theirs))) / np.max(np.abs(theirs)))
        for mine, theirs in zip(ours, profiles, strict=True)
    )


@functools.lru_cache(maxsize=len(ALL_TUMOUR_TYPES))
def typed_case(tumour_type: str) -> PhantomCase:
    """One rendered case per type (session cache)."""
    return generate_case(SEED, f"TYPED-{tumour_type}", PhantomParams(tumour_type=tumour_type))


def _location(case: PhantomCase) -> dict[str, float]:
    atlas = structure_atlas_for(case.images["t1n"], case.affine, mode="never").atlas
    return location_features(case.segmentation, case.affine, case.images["t1n"] > 0, atlas)


@pytest.mark.slow
def test_default_phantoms_are_unchanged() -> None:
    case = generate_case(case_seed(1000, 0), "PHANTOM-TRAIN-00000-000")
    assert "diagnosis" not in case.truth
    assert "tumour_type" not in case.truth["params"]["settings"]
    assert hashlib.sha256(case.segmentation.tobytes()).hexdigest() == (
        DEFAULT_CASE_SEGMENTATION_SHA256
    )
    reference = json.loads(DEFAULT_CASE_PROFILES.read_text())["profiles"]
    for modality, profiles in reference.items():
        assert _profile_mismatch(case.images[modality], profiles) <= PROFILE_TOLERANCE, modality
    # the comparison is tight enough to see one voxel changed by 1 %
    nudged = case.images["t2f"].copy()
    nudged[np.unravel_index(np.argmax(nudged), nudged.shape)] *= 1.01
    assert _profile_mismatch(nudged, reference["t2f"]) > 10 * PROFILE_TOLERANCE
    truth = json.dumps(_rounded(case.truth), sort_keys=True).encode()
    assert hashlib.sha256(truth).hexdigest() == DEFAULT_CASE_TRUTH_SHA256


def test_tumour_type_keeps_the_other_draws_and_is_deterministic() -> None:
    plain = sample_case_params(123)
    typed = sample_case_params(123, PhantomParams(tumour_type="meningioma"))
    assert typed["anatomy_transform"] == plain["anatomy_transform"]
    assert typed["mass_effect"] == plain["mass_effect"]
    assert typed["tumour"]["orientation"] == plain["tumour"]["orientation"]
    assert typed["diagnosis"]["tumour_type"] == "meningioma"
    assert typed == sample_case_params(123, PhantomParams(tumour_type="meningioma"))
    assert "diagnosis" not in plain


def test_unknown_tumour_type_is_named() -> None:
    with pytest.raises(ValueError, match="'astroblastoma'"):
        PhantomParams(tumour_type="astroblastoma")
    with pytest.raises(ValueError, match="'astroblastoma'"):
        draw_diagnosis("astroblastoma", np.random.default_rng(0))


def test_glioma_idh_correlates_in_the_drawn_diagnoses() -> None:
    rng = np.random.default_rng(5)
    draws = [draw_diagnosis("glioma", rng) for _ in range(600)]
    mutant = [d for d in draws if d["idh_mutant"]]
    wildtype = [d for d in draws if not d["idh_mutant"]]
    assert 0.3 < len(mutant) / len(draws) < 0.6
    assert (
        np.mean([d["age_years"] for d in mutant]) < np.mean([d["age_years"] for d in wildtype]) - 15
    )

    def enhancing_necrotic(group: list[dict]) -> float:
        return float(np.mean([d["phenotype"] == "necrotic" for d in group]))

    assert enhancing_necrotic(mutant) < 0.3 < 0.6 < enhancing_necrotic(wildtype)
    assert all(d["who_grade"] == 4 for d in wildtype)
    assert any(d["t2_flair_mismatch"] for d in mutant)
    assert not any(d["t2_flair_mismatch"] for d in wildtype)
    methylated = {
        key: np.mean([d["mgmt_methylated"] for d in group])
        for key, group in (("mutant", mutant), ("wildtype", wildtype))
    }
    assert methylated["mutant"] > methylated["wildtype"]
    assert {d["idh_mutant"] for d in (draw_diagnosis("schwannoma", rng) for _ in range(5))} == {
        None
    }


@pytest.mark.slow
def test_tumour_types_sit_at_their_sites() -> None:
    where = {t: _location(typed_case(t)) for t in ALL_TUMOUR_TYPES}
    for name in ("schwannoma", "medulloblastoma", "ependymoma"):
        sites = typed_case(name).truth["params"]["placement"]["site"]
        if sites in ("cerebellopontine", "vermis", "fourth_ventricle"):
            # a cerebellopontine-angle tumour also touches the temporal lobe mask
            assert where[name]["location_infratentorial_fraction"] > 0.3, (name, where[name])
    for name in ("meningioma", "pituitary_adenoma"):
        assert where[name]["location_infratentorial_fraction"] < 0.5, (name, where[name])
    # extra-axial tumours touch the brain surface, an intra-axial glioma lies deeper
    assert where["meningioma"]["location_skull_distance_mm"] <= 2.0
    assert where["schwannoma"]["location_skull_distance_mm"] <= 2.0
    assert (
        where["meningioma"]["location_surface_contact_fraction"]
        > (where["glioma"]["location_surface_contact_fraction"])
    )
    assert where["pituitary_adenoma"]["location_min_midline_distance_mm"] <= 3.0
    assert where["central_neurocytoma"]["location_ventricle_overlap_fraction"] > 0.3
    for name in ALL_TUMOUR_TYPES:
        truth = typed_case(name).truth
        assert truth["diagnosis"]["tumour_type"] == name
        assert truth["volumes_ml"]["WT"] > 0.5, name


@pytest.mark.slow
def test_type_phenotypes_show_in_the_images() -> None:
    def median_in(case: PhantomCase, modality: str, label: int) -> float:
        brain = case.images["t1n"] > 0
        region = case.segmentation == label
        return float(
            np.median(case.images[modality][region]) / np.median(case.images[modality][brain])
        )

    meningioma = typed_case("meningioma")
    assert meningioma.truth["diagnosis"]["phenotype"] in ("solid", "patchy", "necrotic")
    if (meningioma.segmentation == 3).sum() > 100:
        # avid enhancement: ET bright on t1c relative to the brain
        assert median_in(meningioma, "t1c", 3) > 1.3


def test_cohort_labels_noise_and_files(tmp_path: Path) -> None:
    spec = CohortSpec(
        seed=42,
        cases=300,
        type_probs={t: 1.0 for t in TUMOUR_TYPES},
        age_given_prob=0.7,
        label_noise={"tumour_type": 0.1, "idh": 0.1, "mgmt": 0.1},
    )
    records = sample_cohort(spec, "T")
    assert records == sample_cohort(spec, "T")
    assert set(Counter(r["rendered_type"] for r in records)) == set(TUMOUR_TYPES)
    flipped = [r for r in records if r["label_noise_applied"]["tumour_type"]]
    assert 0.03 < len(flipped) / len(records) < 0.2
    assert all(r["labels"]["tumour_type"] != r["rendered_type"] for r in flipped)
    ages = [r["labels"]["age_years"] for r in records]
    assert 0.55 < np.mean([a is not None for a in ages]) < 0.85
    for record in records:
        labels = record["labels"]
        if labels["tumour_type"] == "glioma" == record["rendered_type"]:
            assert isinstance(task_target(record, "idh"), bool)
            assert isinstance(task_target(record, "mgmt"), bool)
        elif labels["tumour_type"] != "glioma":
            assert task_target(record, "idh") is None and task_target(record, "mgmt") is None
        assert task_target(record, "grade") == (labels["who_grade"] >= 3)
    write_cohort_truth(records[:5], tmp_path)
    assert read_cohort(tmp_path) == records[:5]
    one = json.loads((tmp_path / "T-00003" / "truth.json").read_text())
    assert one["labels"] == records[3]["labels"]
    assert one["diagnosis"]["tumour_type"] == one["rendered_type"]
    with pytest.raises(ValueError, match="unknown"):
        CohortSpec(seed=1, cases=1, type_probs={"lymphoma": 1.0})
    with pytest.raises(ValueError, match="task must be one of"):
        task_target(records[0], "ki67")
