"""The I/O of the DICOM outputs: read a stored study, build its SEG / SR / PDF, cache them.

A study's SEG is built once per type and kept in its folder (``dicom/``), so the SR, which
references the BINARY SEG by its SOP Instance UID, always points at the SEG the PACS receives.
A study analysed from NIfTI has no DICOM source: every output answers 409.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from cerebrascan.dicom_out.pdf import build_encapsulated_pdf
from cerebrascan.dicom_out.seg import (
    Algorithm,
    SegType,
    build_segmentation,
    source_datasets,
)
from cerebrascan.dicom_out.sr import build_measurement_report
from cerebrascan.errors import InputError
from cerebrascan.store.artefacts import DICOM_SOURCE_FILE, RESULT_FILE, StudyArtefacts

logger = logging.getLogger(__name__)

OUTPUT_FOLDER = "dicom"
_BUILD_LOCK = threading.Lock()
"""One SEG build at a time in this process, whichever route's instance asks (GET and send)."""


def _dicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class StudyDicomOutputs:
    """DICOM SEG, SR and Encapsulated PDF of the stored studies under ``store``."""

    def __init__(self, store: StudyArtefacts) -> None:
        self.store = store

    def _sources(self, study_id: str) -> list[Dataset]:
        result = self.store.artefact(study_id, RESULT_FILE)  # 404 for an unknown study
        source = result.parent / DICOM_SOURCE_FILE
        if not source.is_file():
            raise InputError(
                "no DICOM source: this study was analysed from NIfTI files; the DICOM outputs "
                "exist for studies sent to POST /analyze/dicom",
                status_code=409,
            )
        return source_datasets(json.loads(source.read_text()))

    def _result(self, study_id: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.store.artefact(study_id, RESULT_FILE).read_text())
        return result

    @staticmethod
    def _algorithm(result: dict[str, Any]) -> Algorithm:
        model = result["model"]
        return Algorithm(name=model["name"], version=model["version"], alias=model["alias"])

    def _cached(self, study_id: str, name: str) -> Path:
        return self.store.folder(study_id) / OUTPUT_FOLDER / name

    def segmentation(self, study_id: str, seg_type: SegType = "binary") -> bytes:
        """The study's DICOM SEG (built on first use, then the same instance).

        Raises:
            InputError: 404 unknown study, 409 no DICOM source, 422 no tumour to encode.
        """
        sources = self._sources(study_id)
        return _dicom_bytes(
            self._segmentation_dataset(study_id, seg_type, sources, self._result(study_id))
        )

    def _segmentation_dataset(
        self, study_id: str, seg_type: SegType, sources: list[Dataset], result: dict[str, Any]
    ) -> Dataset:
        cached = self._cached(study_id, f"seg-{seg_type}.dcm")
        with _BUILD_LOCK:
            if cached.is_file():
                return pydicom.dcmread(cached)
            labels, affine = self.store.load_labels(study_id)
            try:
                seg = build_segmentation(
                    labels, affine, sources, self._algorithm(result), seg_type=seg_type
                )
            except ValueError as exc:
                raise InputError(f"no DICOM SEG for this study: {exc}", status_code=422) from None
            cached.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=cached.parent, prefix=f".{cached.name}.")
            os.close(handle)
            partial = Path(name)
            try:
                seg.save_as(partial, enforce_file_format=True)
                # Create-if-absent, atomically: never a half-written SEG in the cache, and
                # when another worker process placed one first, every answer is that one.
                os.link(partial, cached)
            except FileExistsError:
                return pydicom.dcmread(cached)
            finally:
                partial.unlink(missing_ok=True)
            logger.info("built the %s DICOM SEG of study %s", seg_type, study_id)
            return seg

    def measurement_report(self, study_id: str) -> bytes:
        """The study's TID 1500 SR (volumes of NETC, SNFH, ET, TC, WT; WT's largest diameter),
        referencing its BINARY SEG.

        Raises:
            InputError: as :meth:`segmentation`.
        """
        sources = self._sources(study_id)
        result = self._result(study_id)
        seg = self._segmentation_dataset(study_id, "binary", sources, result)
        volumetrics = (result.get("analyzers", {}).get("volumetrics") or {}).get("result") or {}
        sr = build_measurement_report(
            seg,
            sources,
            result["volumes_ml"],
            self._algorithm(result),
            max_diameter_mm=volumetrics.get("max_diameter_mm"),
        )
        return _dicom_bytes(sr)

    def report_pdf(self, study_id: str, render_pdf: Callable[[], bytes]) -> bytes:
        """The report ``render_pdf`` renders, as an Encapsulated PDF in the study's DICOM study
        (rendered only once the study is known to have a DICOM source).

        Raises:
            InputError: 404 unknown study, 409 no DICOM source.
        """
        sources = self._sources(study_id)
        return _dicom_bytes(
            build_encapsulated_pdf(render_pdf(), sources, self._algorithm(self._result(study_id)))
        )
