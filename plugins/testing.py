"""Helpers for testing analyzers with the host directly (no server, no model, no files).

Example, through the host (loading, options, isolation as on the server)::

    from plugins.host import AnalyzerHost
    from plugins.testing import MemoryArtefactSink, study_inputs

    host = AnalyzerHost(extra_plugins={"mine": my_plugin_module})
    outcomes = host.run(study_inputs(labels), artefacts=MemoryArtefactSink())
    assert outcomes["my_analyzer"].status == "ok", outcomes["my_analyzer"].error

or calling ``analyze`` directly with the context the host would build::

    analyzer = MyAnalyzer()
    context = analysis_context(analyzer, study_inputs(labels), options={"threshold": 0.5})
    result = analyzer.analyze(context)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from plugins.analyzer import (
    ARTEFACT_NAME_PATTERN,
    AnalysisContext,
    Analyzer,
    ArtefactSink,
    Need,
    PatientHistory,
)
from plugins.options import AnalyzerOptions
from plugins.running import StudyInputs, build_context

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
    volumes_ml: Mapping[str, float] | None = None,
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
        volumes_ml=volumes_ml,
        probabilities=probabilities,
        tta_disagreement=tta_disagreement,
        prior_studies=prior_studies,
    )


def validated_options(
    analyzer: Analyzer, options: Mapping[str, Any] | None = None
) -> AnalyzerOptions:
    """``options`` as the host hands them to ``analyzer``: an instance of its
    ``options_model`` (defaults filled in), or the mapping as given when it has none.

    Raises:
        ValueError: the model refuses the options; the message names the analyzer, then gives
            pydantic's description of each bad field and value.
    """
    model = analyzer.options_model
    if model is None:
        return dict(options or {})
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise ValueError(f"invalid options for analyzer {analyzer.name!r}: {exc}") from exc


def analysis_context(
    analyzer: Analyzer,
    inputs: StudyInputs,
    *,
    artefacts: ArtefactSink | None = None,
    options: Mapping[str, Any] | BaseModel | None = None,
    results: Mapping[str, BaseModel] | None = None,
    needs: frozenset[Need] | None = None,
) -> AnalysisContext:
    """The context the host would give ``analyzer`` for ``inputs``, to call ``analyze`` directly.

    Args:
        analyzer: the analyzer under test.
        inputs: the study (see :func:`study_inputs`).
        artefacts: where artefacts go (default: a new :class:`MemoryArtefactSink`).
        options: raw options (validated by :func:`validated_options`) or an options instance.
        results: results of the analyzers in ``depends_on``.
        needs: inputs to provide (default: the analyzer's ``needs``).

    Raises:
        ValueError: ``options`` that the analyzer's ``options_model`` refuses (see
            :func:`validated_options`).
    """
    chosen = options if isinstance(options, BaseModel) else validated_options(analyzer, options)
    return build_context(
        analyzer,
        frozenset(Need(n) for n in (analyzer.needs if needs is None else needs)),
        inputs,
        artefacts if artefacts is not None else MemoryArtefactSink(),
        chosen,
        results or {},
    )
