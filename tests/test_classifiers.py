"""The tumour classifiers: features, the OOD detector, safe loading, the committed models and
their held-out metrics, and registration in a real MLflow sqlite registry."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cerebrascan.classifiers.cohort import TASKS
from cerebrascan.classifiers.features import (
    MIN_TEXTURE_VOXELS,
    MODALITIES,
    case_features,
    radiomics_features,
)
from cerebrascan.classifiers.metrics import classification_metrics
from cerebrascan.classifiers.model_card import ood_verdict, share_with_interval
from cerebrascan.classifiers.model_registry import (
    ClassifierNotAvailableError,
    ensure_bundled_classifiers,
    load_folder,
    load_skops,
    resolve_classifier,
    save_skops,
)
from cerebrascan.classifiers.models import (
    build_classifier,
    feature_matrix,
    fit_ood_detector,
    ood_feature_names,
)
from cerebrascan.classifiers.segmentation_quality import segmentation_uncertainty
from cerebrascan.classifiers.serving import assess
from cerebrascan.settings import Settings

MODELS_DIR = Path(__file__).resolve().parent.parent / "models" / "classifiers"


@pytest.fixture(scope="session")
def bundled() -> dict[str, object]:
    """The committed classifiers, loaded from their folders."""
    return {
        task: load_folder(MODELS_DIR / task, task=task, name=task, version="bundled")
        for task in TASKS
    }


def test_ood_detector_flags_shifted_rows_and_keeps_in_distribution_ones() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 30))
    train = rng.normal(size=(300, 6)) @ mixing + 0.1 * rng.normal(size=(300, 30))
    held_out = rng.normal(size=(200, 6)) @ mixing + 0.1 * rng.normal(size=(200, 30))
    shifted = held_out.copy()
    shifted[:, :10] += 3.0 * train[:, :10].std(axis=0)  # a correlation the training never saw
    detector = fit_ood_detector(train, variance=0.9, quantile=0.95, seed=0)
    assert np.mean(detector.scores(held_out) > detector.threshold) <= 0.12
    assert np.mean(detector.scores(shifted) > detector.threshold) >= 0.9
    with_nan = held_out[:5].copy()
    with_nan[:, 3] = np.nan
    assert np.isfinite(detector.scores(with_nan)).all()


def test_ood_detector_is_not_blinded_by_heavy_tailed_columns() -> None:
    # radiomics columns can be heavy-tailed (here: Cauchy); with z-scores their training
    # extremes set every threshold and a shift of the well-behaved columns goes unseen
    rng = np.random.default_rng(2)

    def draw(n: int) -> np.ndarray:
        return np.concatenate([rng.normal(size=(n, 8)), rng.standard_cauchy(size=(n, 8))], 1)

    train, held_out = draw(300), draw(200)
    labels = np.where(train[:, 0] > 0, "a", "b")
    shifted = draw(60)
    shifted[:, :4] += 3.0
    detector = fit_ood_detector(train, labels, variance=0.9, quantile=0.95, seed=0)
    assert np.mean(detector.scores(held_out) > detector.threshold) <= 0.10
    assert np.mean(detector.scores(shifted) > detector.threshold) >= 0.9
    assert detector.class_means.shape == (2, detector.components)
    with pytest.raises(ValueError, match="3 entries for 300 feature rows"):
        fit_ood_detector(train, ["a", "b", "a"], variance=0.9, quantile=0.95, seed=0)


def test_ood_check_watches_phenotype_columns_only() -> None:
    names = [
        "location_ventricle_overlap_fraction",
        "fraction_ET_of_TC",
        "WT_log_volume_ml",
        "ET_t2f_original_firstorder_Median",
        "ET_t2f_original_firstorder_Mean",
        "WT_t1c_original_glcm_Contrast",
        "age_years",
    ]
    assert ood_feature_names(names) == names[:4]


def test_skops_loader_refuses_untrusted_types(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    save_skops({"a": np.arange(3)}, path)
    assert load_skops(path)["a"].tolist() == [0, 1, 2]
    save_skops(Path("x"), path)  # a pathlib object: not a scikit-learn/numpy type
    with pytest.raises(ClassifierNotAvailableError, match="not trusted"):
        load_skops(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(ClassifierNotAvailableError, match="not a readable skops file"):
        load_skops(path)


def test_metrics_of_perfect_and_uninformative_predictions() -> None:
    classes = ["a", "b", "c"]
    labels = ["a", "b", "c", "a", "b", "c"]
    perfect = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    metrics = classification_metrics(classes, labels, perfect)
    assert metrics["accuracy"] == metrics["macro_f1"] == metrics["roc_auc"] == 1.0
    assert metrics["brier"] == 0.0
    flat = np.full((6, 3), 1 / 3)
    assert classification_metrics(classes, labels, flat)["roc_auc"] == 0.5
    binary = classification_metrics(
        ["n", "p"], ["n", "p", "p"], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    )
    assert binary["roc_auc"] == 1.0
    assert math.isclose(binary["brier"], (0.01 + 0.04 + 0.36) / 3)


def test_classifier_explanations_point_at_the_informative_feature() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    y = np.where(x[:, 2] > 0, "pos", "neg")
    model = build_classifier(1.0, 0).fit(x, y)
    from cerebrascan.classifiers.models import OodDetector, contributions

    parts = contributions(model, x[:1], 5)
    assert parts.shape == (1, 5)
    assert int(np.argmax(np.abs(parts[0]))) == 2
    detector = fit_ood_detector(x, variance=0.9, quantile=0.95, seed=0)
    assert isinstance(detector, OodDetector)


def test_features_of_an_empty_segmentation_raise_a_named_error() -> None:
    images = {m: np.ones((8, 8, 8), np.float32) for m in ("t1n", "t1c", "t2w", "t2f")}
    with pytest.raises(ValueError, match="no tumour voxel"):
        radiomics_features(images, np.zeros((8, 8, 8), np.uint8), np.eye(4), images["t1n"] > 0)
    with pytest.raises(ValueError, match="lack modalities"):
        radiomics_features(
            {"t1n": images["t1n"]}, np.ones((8, 8, 8), np.uint8), np.eye(4), images["t1n"] > 0
        )


def test_a_scattered_sub_region_the_2mm_grid_misses_gets_nan_features_not_an_error() -> None:
    # a predicted segmentation can hold isolated NETC voxels, enough of them at 1 mm, that all
    # fall between the samples of the 2 mm texture grid: pyradiomics then refuses the region
    # ("Label (1) not present in mask"); seen on a fresh meningioma phantom
    rng = np.random.default_rng(0)
    shape = (60, 60, 60)
    images = {m: rng.normal(100, 10, shape).astype(np.float32) for m in MODALITIES}
    labels = np.zeros(shape, np.uint8)
    labels[15:45, 15:45, 15:45] = 3
    lattice = np.ix_(range(21, 32, 2), range(21, 32, 2), range(21, 26, 2))
    labels[lattice] = 1
    assert (labels == 1).sum() >= MIN_TEXTURE_VOXELS
    features = radiomics_features(images, labels, np.eye(4), np.ones(shape, bool))
    netc = {k: v for k, v in features.items() if k.startswith("NETC_t1n_original_")}
    assert netc and all(math.isnan(v) for v in netc.values())
    assert features["NETC_log_volume_ml"] > 0  # the volume is still counted
    assert not math.isnan(features["ET_t1n_original_firstorder_Mean"])
    assert not math.isnan(features["TC_original_shape_Sphericity"])


def test_committed_models_load_safely_and_meet_the_held_out_targets(bundled: dict) -> None:
    metrics = {task: json.loads((MODELS_DIR / task / "metrics.json").read_text()) for task in TASKS}
    assert metrics["tumour_type"]["macro_f1"] >= 0.85
    assert metrics["grade"]["roc_auc"] >= 0.85
    assert metrics["idh"]["roc_auc"] >= 0.80
    assert 0.0 <= metrics["mgmt"]["roc_auc"] <= 1.0
    for task in TASKS:
        # the OOD check keeps held-out phantoms on the ground-truth segmentation it learned
        # from; as served (predicted segmentation) and on the shifted cohorts its rates are
        # measured and written in the card (below target: see docs/classifiers.md)
        assert metrics[task]["truth_segmentation_ood_flagged_in_distribution"] <= 0.10
        assert 0.0 <= metrics[task]["ood_flagged_in_distribution"] <= 1.0
        assert 0.0 <= metrics[task]["ood_flagged_shifted"] <= 1.0
        assert (
            metrics[task]["n_cases"] + metrics[task]["n_failed_segmentations"]
            == (metrics[task]["truth_segmentation_n_cases"])
        )
    for task in TASKS:
        card = (MODELS_DIR / task / "model_card.md").read_text()
        assert "Research use only" in card and "phantoms" in card
        assert f"{metrics[task]['roc_auc']:.3f}" in card
        assert f"{metrics[task]['truth_segmentation_roc_auc']:.3f}" in card
        assert f"{metrics[task]['ood_flagged_shifted']:.1%}" in card
        loaded = bundled[task]
        assert loaded.spec["task"] == task
        assert len(loaded.feature_names) == loaded.model.n_features_in_


def test_segmentation_uncertainty_counts_the_uncertain_cloud_per_tumour_voxel() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # 1000 voxels
    background = np.ones(labels.shape, np.float16)
    background[labels > 0] = 0.05  # confident tumour
    background[4, 5:15, 5:15] = 0.5  # a one-voxel uncertain rim on one face: 100 voxels
    probabilities = np.stack([background, 1 - background, np.zeros_like(background)])
    assert segmentation_uncertainty(probabilities, labels) == pytest.approx(0.1)
    # a failed segmentation: a small core in a wide cloud of 0.3-0.6 tumour probability
    cloud = np.ones(labels.shape, np.float16)
    cloud[2:18, 2:18, 2:18] = 0.6
    core = np.zeros_like(labels)
    core[9:11, 9:11, 9:11] = 1
    cloud[core > 0] = 0.1
    ratio = segmentation_uncertainty(np.stack([cloud, 1 - cloud]), core)
    assert ratio == pytest.approx((16**3 - 8) / 8)
    assert segmentation_uncertainty(None, labels) is None
    assert segmentation_uncertainty(probabilities, np.zeros_like(labels)) == math.inf
    with pytest.raises(ValueError, match="probabilities grid"):
        segmentation_uncertainty(probabilities[:, :10], labels)


def test_model_card_rates_carry_wilson_intervals() -> None:
    # 25 of 30: Wilson 95 % interval 0.664-0.927 (Newcombe 1998, method 3)
    assert share_with_interval(25 / 30, 30) == "83.3% (95 % CI 66%-93%)"
    assert share_with_interval(0.0, 120) == "0.0% (95 % CI 0%-3%)"


def test_ood_verdict_says_not_met_unless_both_cohorts_reach_90_percent() -> None:
    rates = {
        "ood_flagged_shifted": 0.90,
        "ood_flagged_shifted_confirmation": 0.833,
        "ood_flagged_in_distribution": 0.05,
    }
    assert "Not met" in ood_verdict("tumour_type", rates)
    rates["ood_flagged_shifted_confirmation"] = 0.917
    assert "met as served on these cohorts" in ood_verdict("tumour_type", rates)
    rates["ood_flagged_in_distribution"] = 0.12
    assert "Not met" in ood_verdict("tumour_type", rates)


@pytest.fixture(scope="module")
def registry_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A fresh sqlite registry holding the bundled classifiers."""
    data_dir = tmp_path_factory.mktemp("classifier-registry")
    settings = Settings(data_dir=data_dir)
    yield settings
    shutil.rmtree(data_dir, ignore_errors=True)


def test_bundled_classifiers_register_resolve_and_check_their_checksum(
    registry_settings: Settings, bundled: dict
) -> None:
    versions = ensure_bundled_classifiers(registry_settings)
    assert set(versions) == set(TASKS)
    assert ensure_bundled_classifiers(registry_settings) == versions  # idempotent
    loaded = resolve_classifier(registry_settings, "tumour_type")
    assert loaded.version == versions["tumour_type"]
    assert loaded.name == registry_settings.classifiers.model_names["tumour_type"]
    row = feature_matrix([{}], loaded.feature_names)
    assert row.shape == (1, len(loaded.feature_names))
    # a tampered download is refused
    name = registry_settings.classifiers.model_names["idh"]
    cached = registry_settings.model_cache_dir / name / versions["idh"]
    resolve_classifier(registry_settings, "idh")
    (cached / "ood.skops").write_bytes((cached / "ood.skops").read_bytes() + b"x")
    from cerebrascan.classifiers import model_registry

    model_registry._loaded.clear()
    with pytest.raises(ClassifierNotAvailableError, match="checksum"):
        resolve_classifier(registry_settings, "idh")
    empty = Settings(data_dir=registry_settings.data_dir / "empty")
    with pytest.raises(ClassifierNotAvailableError, match="model not installed"):
        resolve_classifier(empty, "grade")


def test_an_out_of_distribution_vector_gets_no_label(bundled: dict) -> None:
    loaded = bundled["tumour_type"]
    weird = {name: 1e6 for name in loaded.feature_names}
    answer = assess(loaded, weird, threshold_scale=1.0, top_features=3)
    assert not answer.assessable and answer.label is None and answer.probabilities == {}
    assert "outside the training distribution" in (answer.reason or "")


@pytest.mark.slow
def test_a_rendered_glioma_is_assessed_with_probabilities_and_reasons(bundled: dict) -> None:
    from cerebrascan.atlas.mapping import structure_atlas_for
    from cerebrascan.phantoms import PhantomParams, generate_case

    case = generate_case(21, "GLIOMA", PhantomParams(tumour_type="glioma"))
    atlas = structure_atlas_for(case.images["t1n"], case.affine, mode="never").atlas
    features = case_features(case.images, case.segmentation, case.affine, atlas, 60.0)
    assert features["age_years"] == 60.0
    assert 0.0 <= features["location_infratentorial_fraction"] <= 1.0
    answer = assess(bundled["tumour_type"], features, threshold_scale=1.0, top_features=4)
    assert answer.assessable, answer.reason
    assert math.isclose(sum(answer.probabilities.values()), 1.0, abs_tol=1e-3)
    assert answer.label == max(answer.probabilities, key=answer.probabilities.get)
    assert answer.confidence == answer.probabilities[answer.label]
    assert len(answer.top_features) == 4
    contributions = [c for _, _, c in answer.top_features]
    assert contributions == sorted(contributions, reverse=True)
