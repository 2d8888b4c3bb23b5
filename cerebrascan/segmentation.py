"""One study through preprocess -> runner -> postprocess, timed per stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cerebrascan.imaging.nnunet_preprocess import nnunet_export, nnunet_preprocess
from cerebrascan.imaging.postprocess import (
    labels_on_input_grid,
    probabilities_on_input_grid,
    probabilities_to_input_grid,
    remove_small_components,
    scalar_map_on_input_grid,
)
from cerebrascan.imaging.preprocess import preprocess_images
from cerebrascan.inputs.study import Study
from runners.protocol import SegmentationRunner


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
    spec = runner.spec
    if list(study.modalities) != list(spec.modalities):
        raise ValueError(f"study modalities {study.modalities} != network's {spec.modalities}")
    if spec.preprocessing == "nnunet":
        return _segment_nnunet(
            study,
            runner,
            mirror_tta=mirror_tta,
            keep_probabilities=keep_probabilities,
            min_component_ml=min_component_ml,
        )
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    case = preprocess_images(study.images, study.spacing, spec.target_spacing_mm)
    timings["preprocess"] = (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    prediction = runner.predict(
        case.data, mirror_tta=mirror_tta, tta_disagreement=tta_disagreement and mirror_tta
    )
    timings["inference"] = (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    cropped = probabilities_to_input_grid(prediction.probabilities, case)
    labels = labels_on_input_grid(cropped, case, spec.output_labels)
    labels, removed = remove_small_components(labels, study.spacing, min_component_ml)
    probabilities = (
        probabilities_on_input_grid(cropped, case, spec.output_labels)
        if keep_probabilities
        else None
    )
    del cropped
    disagreement = (
        scalar_map_on_input_grid(prediction.tta_disagreement, case)
        if prediction.tta_disagreement is not None
        else None
    )
    timings["postprocess"] = (time.perf_counter() - clock) * 1000
    return SegmentationResult(
        labels=labels,
        timings_ms=timings,
        probabilities=probabilities,
        tta_disagreement=disagreement,
        removed_islands=removed,
    )


def _segment_nnunet(
    study: Study,
    runner: SegmentationRunner,
    *,
    mirror_tta: bool,
    keep_probabilities: bool,
    min_component_ml: float,
) -> SegmentationResult:
    """An imported nnU-Net v2 model: nnU-Net's preprocessing and export, step by step.

    Logits (fold-averaged in the graph) are resampled to the cropped input grid before the
    softmax/sigmoid, as ``nnUNetPredictor`` does. TTA disagreement is not computed here.
    """
    spec = runner.spec
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    case = nnunet_preprocess(study.images, study.spacing, spec)
    timings["preprocess"] = (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    prediction = runner.predict(case.data, mirror_tta=mirror_tta)
    timings["inference"] = (time.perf_counter() - clock) * 1000
    if prediction.logits is None:
        raise ValueError(f"runner {runner.name} keeps no logits; nnU-Net export needs them")
    clock = time.perf_counter()
    output = nnunet_export(prediction.logits, case, spec)
    labels, removed = remove_small_components(output.labels, study.spacing, min_component_ml)
    probabilities = region_probabilities = None
    if keep_probabilities:
        if spec.output_kind == "sigmoid_regions":
            region_probabilities = output.probabilities.astype(np.float16)
        else:
            probabilities = np.zeros(output.probabilities.shape, dtype=np.float16)
            probabilities[spec.output_labels] = output.probabilities
    timings["postprocess"] = (time.perf_counter() - clock) * 1000
    return SegmentationResult(
        labels=labels,
        timings_ms=timings,
        probabilities=probabilities,
        removed_islands=removed,
        region_probabilities=region_probabilities,
    )
