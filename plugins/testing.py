"""Helpers for testing analyzers with the host directly (no server, no model, no files).

Example::

    from plugins.host import AnalyzerHost
    from plugins.testing import MemoryArtefactSink, study_inputs

    host = AnalyzerHost(extra_plugins={"mine": my_plugin_module})
    outcomes = host.run(study_inputs(labels), artefacts=MemoryArtefactSink())
    assert outcomes["my_analyzer"].status == "ok", outcomes["my_analyzer"].error
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from plugins.analyzer import ARTEFACT_NAME_PATTERN, PatientHistory
from plugins.host import StudyInputs

TEST_STUDY_ID = "0" * 32


class MemoryArtefactSink:
    """An :class:`plugins.analyzer.ArtefactSink` keeping artefacts in memory.

    Args:
        shape: the study grid; when given, arrays must start with it (like the real sink).
    """

    def __init__(self, shape: tuple[int, ...] | None = None) -> None:
        self.shape = shape
        self.arrays: dict[str, npt.NDArray[Any]] = {}
        self.descriptions: dict[str, str] = {}

    def write_nifti(self, name: str, array: npt.NDArray[Any], *, description: str) -> str:
        """Keep a copy of ``array`` under ``name``; return a fake URL.

        Raises:
            ValueError: a malformed name, or an array not on ``shape``.
        """
        if not ARTEFACT_NAME_PATTERN.match(name):
            raise ValueError(f"artefact name {name!r} must match {ARTEFACT_NAME_PATTERN.pattern}")
        data = np.array(array, copy=True)
        if self.shape is not None and tuple(data.shape[: len(self.shape)]) != tuple(self.shape):
            raise ValueError(f"artefact {name!r} has shape {data.shape}, grid is {self.shape}")
        self.arrays[name] = data
        self.descriptions[name] = description
        return f"memory://{name}"


def study_inputs(
    segmentation: npt.NDArray[np.integer] | None = None,
    *,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    affine: npt.NDArray[np.float64] | None = None,
    images: npt.NDArray[np.float32] | None = None,
    probabilities: npt.NDArray[np.float16] | None = None,
    tta_disagreement: npt.NDArray[np.float16] | None = None,
    study_id: str = TEST_STUDY_ID,
    prior_studies: PatientHistory | None = None,
) -> StudyInputs:
    """:class:`StudyInputs` for a synthetic study; the affine defaults to ``diag(spacing)``."""
    if affine is None:
        affine = np.diag([*spacing_mm, 1.0]).astype(np.float64)
    return StudyInputs(
        study_id=study_id,
        affine=np.asarray(affine, dtype=np.float64),
        spacing_mm=spacing_mm,
        modalities=("t1n", "t1c", "t2w", "t2f"),
        images=images,
        segmentation=None if segmentation is None else np.asarray(segmentation, dtype=np.uint8),
        probabilities=probabilities,
        tta_disagreement=tta_disagreement,
        prior_studies=prior_studies,
    )
