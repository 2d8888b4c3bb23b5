"""A received study's analysis: the spooled files through the path of ``POST /analyze/dicom``.

The files go through :class:`~cerebrascan.dicom_analysis.DicomAnalysis`, the code the HTTP
route runs; only the options come from the ``pacs`` settings instead of a request, and the
study is stored for the default tenant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from cerebrascan.dicom_analysis import DicomAnalysis
from cerebrascan.inputs.dicom.selection import SelectionRule
from cerebrascan.inputs.dicom.study_builder import Register, StripSkull
from cerebrascan.pipeline import AnalysisPipeline
from schemas.analysis import AnalyzeOptions, AnalyzeResponse

logger = logging.getLogger(__name__)


class SpooledStudyAnalyser:
    """Analyses the files of one received study and stores the result.

    Args:
        pipeline: the analysis pipeline (its settings give the ``dicom``, ``limits`` and
            ``pacs`` sections).
        rules: the series selection rules (``dicom.rules_file``, read once).
        strip_skull: brain extraction, or None when none is configured (then received studies
            must be skull-stripped: ``pacs.listen_skull_stripped``).
        register: rigid registration, or None when none is configured.
    """

    def __init__(
        self,
        pipeline: AnalysisPipeline,
        rules: Sequence[SelectionRule],
        *,
        strip_skull: StripSkull | None,
        register: Register | None,
    ) -> None:
        self.pipeline = pipeline
        self.rules = rules
        self.strip_skull = strip_skull
        self.register = register

    def __call__(self, files: Sequence[Path]) -> AnalyzeResponse:
        """Analyse ``files`` (one study's instances) as ``POST /analyze/dicom`` would.

        Raises:
            InputError: the study is refused (selection, geometry, decoding, options).
        """
        settings = self.pipeline.settings
        options = AnalyzeOptions(skull_stripped=settings.pacs.listen_skull_stripped)
        analysis = DicomAnalysis(self.pipeline, self.rules, self.strip_skull, self.register).run(
            None,
            [(path.name, path) for path in files],
            options,
            deadline=time.monotonic() + settings.bounds.request_deadline_s,
        )
        return analysis.response
