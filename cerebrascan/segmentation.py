"""One study through preprocess -> runner -> postprocess, timed per stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cerebrascan.imaging.postprocess import labels_on_input_grid, probabilities_to_input_grid
from cerebrascan.imaging.preprocess import preprocess_images
from cerebrascan.imaging.study import Study
from schemas.model_spec import ModelSpec


class ProbabilityRunner(Protocol):
    """What the segmentation step needs from a runner."""

    name: str
    spec: ModelSpec

    def predict_probabilities(
        self, volume: npt.NDArray[np.float32], *, mirror_tta: bool
    ) -> npt.NDArray[np.float32]: ...


@dataclass
class SegmentationResult:
    """Labels on the input grid and how long each stage took (ms)."""

    labels: npt.NDArray[np.uint8]
    timings_ms: dict[str, float] = field(default_factory=dict)


def segment_study(
    study: Study, runner: ProbabilityRunner, *, mirror_tta: bool
) -> SegmentationResult:
    """Segment a study with ``runner``; labels come back on the study's exact grid.

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
    probabilities = runner.predict_probabilities(case.data, mirror_tta=mirror_tta)
    timings["inference"] = (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    cropped = probabilities_to_input_grid(probabilities, case)
    labels = labels_on_input_grid(cropped, case, spec.output_labels)
    timings["postprocess"] = (time.perf_counter() - clock) * 1000
    return SegmentationResult(labels=labels, timings_ms=timings)
