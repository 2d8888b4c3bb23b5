"""The ``classification`` and ``radiogenomics`` analyzers through the plugin host, on rendered
phantoms, with the bundled classifiers registered in a real MLflow sqlite registry."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cerebrascan.classifiers import model_registry, serving
from cerebrascan.classifiers.model_registry import ensure_bundled_classifiers
from cerebrascan.inputs.study import Study
from cerebrascan.phantoms import PhantomCase, PhantomParams, generate_case
from cerebrascan.phantoms.contrasts import MODALITIES
from cerebrascan.pipeline import build_analyzer_host
from cerebrascan.segmentation import segment_study
from cerebrascan.settings import Settings
from plugins.host import AnalyzerHost
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink, study_inputs
from runners.onnx_runner import OnnxSegmentationRunner
from schemas.analyzers import AnalyzerOutcome
from schemas.model_spec import ModelSpec

PLUGINS = ("plugins.builtin.classification", "plugins.builtin.radiogenomics")
#: The phantoms lie on the SRI24 grid: the atlas by voxel index, as the training features.
NO_REGISTRATION = {"registration": "never"}


@functools.lru_cache(maxsize=4)
def typed(tumour_type: str, seed: int) -> PhantomCase:
    """A rendered case of one type (session cache)."""
    return generate_case(seed, f"ANALYZER-{tumour_type}", PhantomParams(tumour_type=tumour_type))


DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


@functools.lru_cache(maxsize=2)
def segmented(tumour_type: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The default model's labels and probabilities for a phantom, as ``/analyze`` has them."""
    case = typed(tumour_type, seed)
    settings = Settings()
    spec = ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())
    runner = OnnxSegmentationRunner(DEFAULT_MODEL / "model.onnx", spec, settings.runner)
    images = np.stack([case.images[m] for m in MODALITIES]).astype(np.float32)
    result = segment_study(
        Study(images=images, affine=case.affine, modalities=tuple(MODALITIES)),
        runner,
        mirror_tta=False,
        keep_probabilities=True,
        min_component_ml=settings.runner.min_component_ml,
    )
    assert result.probabilities is not None
    return result.labels, result.probabilities


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """CEREBRASCAN_DATA_DIR pointing at a registry holding the bundled classifiers."""
    data_dir = tmp_path_factory.mktemp("analyzer-registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CEREBRASCAN_DATA_DIR", str(data_dir))
        ensure_bundled_classifiers(Settings())
        yield data_dir
    model_registry._loaded.clear()
    serving.clear_cache()


def classifier_host() -> AnalyzerHost:
    """A host with only the two analyzers, configured from the settings in force now (as the
    server's composition root does), so their models are resolved from that registry."""
    settings = Settings(plugins=PluginSettings(entry_points=False))
    return build_analyzer_host(settings, builtin_plugins=PLUGINS)


def run(
    case: PhantomCase,
    segmentation: np.ndarray | None = None,
    age: float | None = None,
    probabilities: np.ndarray | None = None,
) -> dict[str, AnalyzerOutcome]:
    """Both analyzers on a case (the truth labels stand in for the predicted segmentation)."""
    host = classifier_host()
    images = np.stack([case.images[m] for m in MODALITIES]).astype(np.float32)
    options = {**NO_REGISTRATION, **({} if age is None else {"patient_age_years": age})}
    inputs = study_inputs(
        case.segmentation if segmentation is None else segmentation,
        affine=case.affine,
        images=images,
        probabilities=probabilities,
        study_id=f"{abs(hash(case.case_id)) % 10**12:032d}",
    )
    return host.run(
        inputs,
        artefacts=MemoryArtefactSink(),
        options={"classification": options, "radiogenomics": options},
    )


def test_both_analyzers_are_listed_with_schemas() -> None:
    host = AnalyzerHost(PluginSettings(entry_points=False), builtin_plugins=PLUGINS)
    listing = {a.name: a for p in host.listing().plugins for a in p.analyzers}
    assert set(listing) == {"classification", "radiogenomics"}
    assert "predictions" in listing["classification"].result_schema["properties"]
    assert "patient_age_years" in listing["radiogenomics"].options_schema["properties"]


@pytest.mark.slow
def test_glioma_gets_type_grade_idh_and_mgmt(registry: Path) -> None:
    outcomes = run(typed("glioma", 31), age=45.0)
    classification = outcomes["classification"]
    assert classification.status == "ok", classification.error
    result = classification.result
    assert "Research use only" in result["research_use_only"]
    assert result["age_given"] is True
    by_task = {p["task"]: p for p in result["predictions"]}
    assert set(by_task) == {"tumour_type", "grade"}
    for prediction in by_task.values():
        assert prediction["assessable"], prediction["reason"]
        assert abs(sum(prediction["probabilities"].values()) - 1.0) < 1e-3
        assert prediction["confidence"] == prediction["probabilities"][prediction["label"]]
        assert prediction["top_features"] and prediction["model_version"]
        assert prediction["ood_score"] <= prediction["ood_threshold"]
    assert by_task["tumour_type"]["label"] == "glioma"
    assert set(result["model_versions"]) == {
        "cerebrascan-tumour-type",
        "cerebrascan-grade",
    }
    genomics = outcomes["radiogenomics"]
    assert genomics.status == "ok", genomics.error
    tasks = {p["task"]: p for p in genomics.result["predictions"]}
    assert set(tasks) == {"idh", "mgmt"}
    assert tasks["idh"]["label"] in ("idh_mutant", "idh_wildtype")
    assert "Research use only" in genomics.result["research_use_only"]


@pytest.mark.slow
def test_a_meningioma_is_typed_and_gets_no_idh(registry: Path) -> None:
    case = typed("meningioma", 36)
    # a typical one: solid, dural based (held-out meningiomas: F1 1.0; atypical, patchy ones can
    # be taken for gliomas)
    assert case.truth["diagnosis"]["phenotype"] == "solid"
    assert case.truth["params"]["placement"]["intra_axial"] is False
    outcomes = run(case, age=55.0)
    result = outcomes["classification"].result
    tumour_type = next(p for p in result["predictions"] if p["task"] == "tumour_type")
    assert tumour_type["assessable"], tumour_type["reason"]
    assert tumour_type["label"] == "meningioma"
    genomics = outcomes["radiogenomics"].result
    assert genomics["assessable"] is False
    assert "apply to gliomas" in genomics["reason"]
    assert all(p["label"] is None for p in genomics["predictions"])


@pytest.mark.slow
def test_an_implausible_case_is_out_of_distribution_not_labelled(registry: Path) -> None:
    case = typed("glioma", 31)
    images = {m: np.array(case.images[m]) for m in MODALITIES}
    tumour = case.segmentation > 0
    images["t1c"][tumour] *= 6.0  # an enhancement no training case had
    implausible = PhantomCase(
        case.case_id + "-X", images, case.segmentation, case.affine, dict(case.truth)
    )
    result = run(implausible)["classification"].result
    for prediction in result["predictions"]:
        assert not prediction["assessable"]
        assert prediction["label"] is None and prediction["probabilities"] == {}
        assert "outside the training distribution" in prediction["reason"]
        assert prediction["ood_score"] > prediction["ood_threshold"]


@pytest.mark.slow
def test_a_failed_segmentation_is_not_assessable_a_confident_one_answers(registry: Path) -> None:
    limit = Settings().classifiers.max_segmentation_uncertainty
    assert limit is not None
    # the default model segments a glioma phantom confidently (Dice ~0.97)
    labels, probabilities = segmented("glioma", 31)
    result = run(typed("glioma", 31), labels, probabilities=probabilities)["classification"].result
    assert result["segmentation_uncertainty"] < limit
    tumour_type = next(p for p in result["predictions"] if p["task"] == "tumour_type")
    assert tumour_type["assessable"] and tumour_type["label"] == "glioma"
    # it fails on a central neurocytoma (a type it never saw): a small core in an uncertain
    # cloud; the features of such a mask would not describe the tumour
    labels, probabilities = segmented("central_neurocytoma", 41)
    outcomes = run(typed("central_neurocytoma", 41), labels, probabilities=probabilities)
    result = outcomes["classification"].result
    assert result["tumour_volume_ml"] >= Settings().classifiers.min_tumour_ml
    assert result["segmentation_uncertainty"] > limit
    assert result["assessable"] is False and "segmentation looks failed" in result["reason"]
    assert all(p["label"] is None for p in result["predictions"])
    assert outcomes["radiogenomics"].result["assessable"] is False


def test_empty_and_tiny_tumours_are_not_assessable_not_errors(registry: Path) -> None:
    case = typed("meningioma", 34)
    empty = np.zeros_like(case.segmentation)
    outcome = run(case, empty)["classification"]
    assert outcome.status == "ok", outcome.error
    assert outcome.result["assessable"] is False
    assert "too small" in outcome.result["reason"]
    tiny = empty.copy()
    tiny[100:104, 100:104, 60:64] = 3  # 0.064 mL
    outcomes = run(case, tiny)
    assert outcomes["classification"].result["assessable"] is False
    assert outcomes["radiogenomics"].status == "ok"
    assert outcomes["radiogenomics"].result["assessable"] is False


def test_no_model_in_the_registry_is_not_assessable(tmp_path: Path) -> None:
    case = typed("meningioma", 34)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CEREBRASCAN_DATA_DIR", str(tmp_path))
        outcome = run(case)["classification"]
    assert outcome.status == "ok", outcome.error
    assert outcome.result["assessable"] is False
    assert "model not installed" in outcome.result["reason"]


def test_bad_options_are_refused_with_the_field_named() -> None:
    host = AnalyzerHost(PluginSettings(entry_points=False), builtin_plugins=PLUGINS)
    with pytest.raises(ValueError, match="patient_age_years"):
        host.validate_options({"classification": {"patient_age_years": -3}})


@pytest.mark.slow
def test_promotion_rebuilds_the_analyzers_with_the_new_version(registry: Path) -> None:
    """Models are resolved once per build: an alias moved behind the server's back is not
    picked up per study; ``POST /admin/models/promote`` (its function) moves it and rebuilds."""
    from cerebrascan.errors import InputError
    from cerebrascan.registry import client_for
    from cerebrascan.serving.http.admin import promote_classifier

    settings = Settings(plugins=PluginSettings(entry_points=False))
    name = settings.classifiers.model_names["tumour_type"]
    alias = settings.classifiers.alias
    client = client_for(settings)
    served = str(client.get_model_version_by_alias(name, alias).version)
    host = build_analyzer_host(settings, builtin_plugins=PLUGINS)
    case = typed("glioma", 31)
    images = np.stack([case.images[m] for m in MODALITIES]).astype(np.float32)

    def tumour_type_version() -> str:
        outcome = host.run(
            study_inputs(case.segmentation, affine=case.affine, images=images),
            artefacts=MemoryArtefactSink(),
            options={"classification": NO_REGISTRATION},
        )["classification"]
        assert outcome.status == "ok", outcome.error
        (prediction,) = [p for p in outcome.result["predictions"] if p["task"] == "tumour_type"]
        return str(prediction["model_version"])

    new = model_registry.register_folder(
        settings, settings.classifiers.bundled_dir / "tumour_type", name=name, alias="candidate"
    )
    try:
        assert tumour_type_version() == served
        client.set_registered_model_alias(name, alias, new)  # as another process would
        assert tumour_type_version() == served  # resolved when built, not per study
        client.set_registered_model_alias(name, alias, served)

        answer = promote_classifier(settings, host, name, new)
        assert answer == {"name": name, "alias": alias, "version": new, "previous_version": served}
        assert tumour_type_version() == new

        with pytest.raises(InputError) as unknown:
            promote_classifier(settings, host, name, "999")
        assert unknown.value.status_code == 404 and "'999'" in str(unknown.value)
        assert str(client.get_model_version_by_alias(name, alias).version) == new
    finally:
        client.set_registered_model_alias(name, alias, served)
        model_registry._loaded.clear()
