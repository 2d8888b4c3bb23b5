"""One study through preprocess -> runner -> postprocess, timed per stage; the three steps
also apart (a cohort runs them in different processes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cerebrascan.imaging.coregistration import resample_onto
from cerebrascan.imaging.nnunet_preprocess import NnunetCase, nnunet_export, nnunet_preprocess
from cerebrascan.imaging.postprocess import (
    labels_and_probabilities_on_input_grid,
    remove_small_components,
    scalar_map_on_input_grid,
)
from cerebrascan.imaging.preprocess import PreprocessedCase, preprocess_images
from cerebrascan.inputs.study import Study
from runners.prediction import RunnerPrediction
from runners.protocol import SegmentationRunner
from schemas.model_spec import ModelSpec


@dataclass
class SegmentationResult:
    """Labels (and, when asked for, probabilities) on the input grid, and stage timings (ms)."""

    labels: npt.NDArray[np.uint8]
    timings_ms: dict[str, float] = field(default_factory=dict)
    probabilities: npt.NDArray[np.float16] | None = None
    """(classes, x, y, z) float16, channel = label value (background, NETC, SNFH, ET);
    background is 1 outside the crop. None unless ``keep_probabilities`` was set."""
    tta_disagreement: npt.NDArray[np.float16] | None = None
    """(x, y, z) float16 disagreement between mirror-TTA flips (0 outside the crop). None
    unless asked for with mirror TTA on."""
    removed_islands: int = 0
    """Whole-tumour islands under ``min_component_ml`` set to background."""
    region_probabilities: npt.NDArray[np.float16] | None = None
    """(regions, x, y, z) float16 sigmoid per region of a region-based (nnU-Net) model, in
    ``spec.regions`` order; 0 outside the crop. ``probabilities`` stays None for such models
    (its channels are label values). None unless ``keep_probabilities`` was set."""


PreparedCase = PreprocessedCase | NnunetCase
"""A study on the network grid (``.data``) with what undoes its preprocessing."""


def segment_study(
    study: Study,
    runner: SegmentationRunner,
    *,
    mirror_tta: bool,
    keep_probabilities: bool = False,
    tta_disagreement: bool = False,
    min_component_ml: float = 0.0,
) -> SegmentationResult:
    """Segment a study with ``runner``; everything comes back on the study's exact grid.

    The three steps (:func:`prepare_case`, :func:`predict_case`, :func:`finish_case`) can
    also run apart, e.g. in different processes of a cohort run.

    Args:
        study: the four modalities.
        runner: executes the network.
        mirror_tta: mirror test-time augmentation.
        keep_probabilities: also return the class probabilities (float16, ~2 bytes x classes
            per voxel).
        tta_disagreement: also return the flips' disagreement (only with ``mirror_tta``).
        min_component_ml: tumour islands smaller than this (mL) become background; 0 keeps all.

    Raises:
        ValueError: the study's modalities differ from the network's.
    """
    if study.segmentation_space is not None:
        return _segment_in_space(
            study,
            runner,
            mirror_tta=mirror_tta,
            keep_probabilities=keep_probabilities,
            tta_disagreement=tta_disagreement,
            min_component_ml=min_component_ml,
        )
    spec = runner.spec
    clock = time.perf_counter()
    case = prepare_case(study, spec)
    preprocess_ms = (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    prediction = predict_case(
        case, runner, mirror_tta=mirror_tta, tta_disagreement=tta_disagreement
    )
    inference_ms = (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    result = finish_case(
        study,
        spec,
        case,
        prediction,
        keep_probabilities=keep_probabilities,
        min_component_ml=min_component_ml,
    )
    result.timings_ms = {
        "preprocess": preprocess_ms,
        "inference": inference_ms,
        "postprocess": (time.perf_counter() - clock) * 1000,
    }
    return result


def _segment_in_space(
    study: Study,
    runner: SegmentationRunner,
    *,
    mirror_tta: bool,
    keep_probabilities: bool,
    tta_disagreement: bool,
    min_component_ml: float,
) -> SegmentationResult:
    """Segment on the study's segmentation space (e.g. SRI24), then bring every map back onto
    the study's grid: labels by nearest neighbour, probabilities linearly."""
    space = study.segmentation_space
    assert space is not None
    inner = segment_study(
        Study(images=space.images, affine=space.affine, modalities=study.modalities),
        runner,
        mirror_tta=mirror_tta,
        keep_probabilities=keep_probabilities,
        tta_disagreement=tta_disagreement,
        min_component_ml=min_component_ml,
    )
    clock = time.perf_counter()

    def back(
        volume: npt.NDArray[np.generic], interpolation: str = "linear"
    ) -> npt.NDArray[np.float32]:
        return resample_onto(
            study.shape,
            study.affine,
            np.asarray(volume, dtype=np.float32),
            space.affine,
            space.study_to_space,
            interpolation="nearest" if interpolation == "nearest" else "linear",
        )

    def maps_back(maps: npt.NDArray[np.float16] | None) -> npt.NDArray[np.float16] | None:
        return None if maps is None else np.stack([back(m) for m in maps]).astype(np.float16)

    probabilities = maps_back(inner.probabilities)
    if probabilities is not None:  # background is what the classes leave (1 outside the space)
        probabilities[0] = np.clip(1.0 - probabilities[1:].astype(np.float32).sum(axis=0), 0, 1)
    disagreement = None if inner.tta_disagreement is None else back(inner.tta_disagreement)
    return SegmentationResult(
        labels=np.rint(back(inner.labels, "nearest")).astype(np.uint8),
        timings_ms={**inner.timings_ms, "space_to_study": (time.perf_counter() - clock) * 1000},
        probabilities=probabilities,
        tta_disagreement=None if disagreement is None else disagreement.astype(np.float16),
        removed_islands=inner.removed_islands,
        region_probabilities=maps_back(inner.region_probabilities),
    )


def prepare_case(study: Study, spec: ModelSpec) -> PreparedCase:
    """Step 1: the study preprocessed for the network ``spec`` describes.

    Raises:
        ValueError: the study's modalities differ from the network's.
    """
    if list(study.modalities) != list(spec.modalities):
        raise ValueError(f"study modalities {study.modalities} != network's {spec.modalities}")
    if spec.preprocessing == "nnunet":
        return nnunet_preprocess(study.images, study.spacing, spec)
    return preprocess_images(study.images, study.spacing, spec.target_spacing_mm)


def predict_case(
    case: PreparedCase,
    runner: SegmentationRunner,
    *,
    mirror_tta: bool,
    tta_disagreement: bool = False,
) -> RunnerPrediction:
    """Step 2: the network on the prepared case (TTA disagreement only for project models)."""
    if isinstance(case, NnunetCase):
        return runner.predict(case.data, mirror_tta=mirror_tta)
    return runner.predict(
        case.data, mirror_tta=mirror_tta, tta_disagreement=tta_disagreement and mirror_tta
    )


def finish_case(
    study: Study,
    spec: ModelSpec,
    case: PreparedCase,
    prediction: RunnerPrediction,
    *,
    keep_probabilities: bool = False,
    min_component_ml: float = 0.0,
) -> SegmentationResult:
    """Step 3: the prediction back on the study's grid (labels, small islands removed, and the
    probabilities when asked for). ``case.data`` is not read: a caller may have dropped it.

    Raises:
        ValueError: an nnU-Net model's runner kept no logits.
    """
    if isinstance(case, NnunetCase):
        return _finish_nnunet(
            study,
            spec,
            case,
            prediction,
            keep_probabilities=keep_probabilities,
            min_component_ml=min_component_ml,
        )
    labels, probabilities = labels_and_probabilities_on_input_grid(
        prediction.probabilities,
        case,
        spec.output_labels,
        keep_probabilities=keep_probabilities,
    )
    labels, removed = remove_small_components(labels, study.spacing, min_component_ml)
    disagreement = (
        scalar_map_on_input_grid(prediction.tta_disagreement, case)
        if prediction.tta_disagreement is not None
        else None
    )
    return SegmentationResult(
        labels=labels,
        probabilities=probabilities,
        tta_disagreement=disagreement,
        removed_islands=removed,
    )


def _finish_nnunet(
    study: Study,
    spec: ModelSpec,
    case: NnunetCase,
    prediction: RunnerPrediction,
    *,
    keep_probabilities: bool,
    min_component_ml: float,
) -> SegmentationResult:
    """An imported nnU-Net v2 model: nnU-Net's export, step by step.

    Logits (fold-averaged in the graph) are resampled to the cropped input grid before the
    softmax/sigmoid, as ``nnUNetPredictor`` does. TTA disagreement is not computed here.
    """
    if prediction.logits is None:
        raise ValueError("the runner kept no logits; nnU-Net export needs them")
    output = nnunet_export(prediction.logits, case, spec)
    labels, removed = remove_small_components(output.labels, study.spacing, min_component_ml)
    probabilities = region_probabilities = None
    if keep_probabilities:
        if spec.output_kind == "sigmoid_regions":
            region_probabilities = output.probabilities.astype(np.float16)
        else:
            probabilities = np.zeros(output.probabilities.shape, dtype=np.float16)
            probabilities[spec.output_labels] = output.probabilities
    return SegmentationResult(
        labels=labels,
        probabilities=probabilities,
        removed_islands=removed,
        region_probabilities=region_probabilities,
    )
