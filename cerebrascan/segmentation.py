"""One study through preprocess -> runner -> postprocess, timed per stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cerebrascan.imaging.postprocess import (
    labels_on_input_grid,
    probabilities_on_input_grid,
    probabilities_to_input_grid,
    remove_small_components,
    scalar_map_on_input_grid,
)
from cerebrascan.imaging.preprocess import preprocess_images
from cerebrascan.imaging.study import Study
from runners.prediction import RunnerPrediction
from schemas.model_spec import ModelSpec


class ProbabilityRunner(Protocol):
    """What the segmentation step needs from a runner."""

    name: str
    spec: ModelSpec

    def predict(
        self,
        volume: npt.NDArray[np.float32],
        *,
        mirror_tta: bool,
        tta_disagreement: bool = False,
    ) -> RunnerPrediction: ...


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


def segment_study(
    study: Study,
    runner: ProbabilityRunner,
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
