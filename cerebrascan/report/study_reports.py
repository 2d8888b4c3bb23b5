"""Reports of stored studies: reads the study folder, builds and renders (the I/O side)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cerebrascan.errors import InputError
from cerebrascan.report.settings import ReportSettings
from cerebrascan.store.artefacts import RESULT_FILE, SEGMENTATION_FILE, StudyArtefacts
from cerebrascan.views.study_views import StudyViews
from schemas.report import OverlayImage, ReportFormat, StudyReport, WriterName

from . import render
from .builder import ReportInputError, build_report
from .overlay import largest_tumour_slice, overlay_png
from .supplied_text import load_supplied_text

MONTAGE_SLICES = 6
"""Slices in the report's montage (the HTML and PDF; the views route gives any count)."""

logger = logging.getLogger(__name__)

T1C_CANDIDATES: tuple[tuple[str, int | None], ...] = (
    ("t1c.nii.gz", None),
    ("image_t1c.nii.gz", None),
    ("images.nii.gz", 1),  # 4-D t1n, t1c, t2w, t2f: t1c is channel 1
)
"""Image volumes a study folder may hold (file name, channel of t1c in a 4-D file)."""
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}


@dataclass(frozen=True)
class RenderedReport:
    """A report in one format."""

    report: StudyReport
    body: bytes
    media_type: str


class StudyReports:
    """Builds the report of a stored study at request time (also for studies stored before
    reports existed).

    Args:
        store: the study store.
        settings: writer selection and LLM endpoint.
    """

    def __init__(self, store: StudyArtefacts, settings: ReportSettings) -> None:
        self.store = store
        self.settings = settings

    def findings(self, study_id: str) -> dict[str, Any]:
        """The stored findings JSON.

        Raises:
            InputError: 400 malformed id, 404 no such study, 500-free 422 if unreadable.
        """
        path = self.store.artefact(study_id, RESULT_FILE)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"stored findings of study {study_id} are unreadable: {exc}", status_code=422
            ) from exc
        if not isinstance(data, dict):
            raise InputError(
                f"stored findings of study {study_id} are not an object", status_code=422
            )
        return data

    def overlay(self, study_id: str) -> tuple[OverlayImage, bytes | None]:
        """The key-image section and its PNG (None when not shown, with the reason)."""
        try:
            seg_path = self.store.artefact(study_id, SEGMENTATION_FILE)
        except InputError:
            return OverlayImage(shown=False, reason="no label map stored for this study"), None
        image = cast(nib.Nifti1Image, nib.load(str(seg_path)))
        labels = np.asarray(image.dataobj, dtype=np.uint8)
        affine = np.asarray(image.affine, dtype=np.float64)
        choice = largest_tumour_slice(labels, affine)
        if choice is None:
            return OverlayImage(shown=False, reason="no tumour segmented"), None
        background, why = self._t1c(study_id, labels.shape)
        kind: Literal["t1c", "registration_reference", "labels"] = "t1c"
        if background is None:
            background, kind = self._registration_image(study_id, labels.shape), "labels"
            if background is not None:
                kind = "registration_reference"
                why = (
                    "no t1c is stored with the study; the labels lie over its stored "
                    "registration image (longitudinal.registration_modality, t1n by default)"
                )
        png = overlay_png(labels, affine, choice, background)
        return (
            OverlayImage(
                shown=True,
                reason=why or None,
                url=f"/studies/{study_id}/report/overlay.png",
                slice_axis=choice.axis,
                slice_index=choice.index,
                tumour_area_mm2=choice.tumour_area_mm2,
                background=kind,
            ),
            png,
        )

    def _registration_image(
        self, study_id: str, shape: tuple[int, ...]
    ) -> npt.NDArray[np.float32] | None:
        """The image the study store keeps for longitudinal registration, if any."""
        load = getattr(self.store, "load_registration_image", None)
        if load is None:
            return None
        stored = load(study_id)
        if stored is None or tuple(stored[0].shape) != tuple(shape):
            return None
        return np.asarray(stored[0], dtype=np.float32)

    def _t1c(
        self, study_id: str, shape: tuple[int, ...]
    ) -> tuple[npt.NDArray[np.float32] | None, str]:
        folder = self.store.folder(study_id)
        for name, channel in T1C_CANDIDATES:
            path = folder / name
            if not path.is_file():
                continue
            loaded = cast(nib.Nifti1Image, nib.load(str(path)))
            volume = np.asarray(loaded.dataobj, dtype=np.float32)
            if channel is not None:
                if volume.ndim != 4 or volume.shape[-1] <= channel:
                    logger.warning("%s is not 4-D with a t1c channel; not used", name)
                    continue
                volume = volume[..., channel]
            if volume.shape != shape:
                logger.warning("%s has shape %s, labels %s; not used", name, volume.shape, shape)
                continue
            return volume, ""
        return None, "no image volume is stored with the study, so the labels are shown alone"

    def build(
        self,
        study_id: str,
        *,
        writer: WriterName | None = None,
        supplied_text: Mapping[str, str] | None = None,
    ) -> tuple[StudyReport, bytes | None]:
        """The report of a stored study and its key image.

        Raises:
            InputError: 400/404 as :meth:`findings`; 422 if the stored findings are not a
                CerebraScan result.
        """
        findings = self.findings(study_id)
        overlay, png = self.overlay(study_id)
        # the text kept with the study (supplied_text.json), then the caller's
        quoted = {**load_supplied_text(self.store.folder(study_id)), **dict(supplied_text or {})}
        try:
            report = build_report(
                findings, overlay, self.settings, writer=writer, supplied_text=quoted
            )
        except ReportInputError as exc:
            raise InputError(str(exc), status_code=422) from exc
        return report, png

    def rendered(
        self,
        study_id: str,
        report_format: ReportFormat,
        *,
        writer: WriterName | None = None,
        supplied_text: Mapping[str, str] | None = None,
    ) -> RenderedReport:
        """The report in ``report_format`` (json, md, html or pdf)."""
        report, png = self.build(study_id, writer=writer, supplied_text=supplied_text)
        montage = self.montage(study_id) if report_format in ("html", "pdf") else None
        return RenderedReport(
            report,
            render_bytes(report, png, report_format, montage_png=montage),
            MEDIA_TYPES[report_format],
        )

    def montage(self, study_id: str) -> bytes | None:
        """The axial montage through the tumour (None without a tumour or a label map)."""
        if not self.overlay_has_tumour(study_id):
            return None
        try:
            return StudyViews(self.store).montage_png(study_id, "axial", MONTAGE_SLICES)
        except InputError as exc:
            logger.info("report without a montage: %s", exc)
            return None

    def overlay_has_tumour(self, study_id: str) -> bool:
        """Whether the stored label map has any tumour voxel."""
        try:
            seg_path = self.store.artefact(study_id, SEGMENTATION_FILE)
        except InputError:
            return False
        image = cast(nib.Nifti1Image, nib.load(str(seg_path)))
        return bool(np.asarray(image.dataobj).any())


def render_bytes(
    report: StudyReport,
    png: bytes | None,
    report_format: ReportFormat,
    *,
    montage_png: bytes | None = None,
) -> bytes:
    """Encode ``report`` in one of the formats (the montage goes into HTML and PDF)."""
    if report_format == "json":
        return report.model_dump_json(indent=1).encode("utf-8")
    if report_format == "md":
        return render.to_markdown(report).encode("utf-8")
    if report_format == "html":
        return render.to_html(report, png, montage_png).encode("utf-8")
    return render.to_pdf(report, png, montage_png)


def write_report_files(
    report: StudyReport, png: bytes | None, folder: Path, stem: str = "report"
) -> list[Path]:
    """Write every format (and the key image) into ``folder``; for the CLI and docs."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, suffix in (("json", "json"), ("md", "md"), ("html", "html"), ("pdf", "pdf")):
        path = folder / f"{stem}.{suffix}"
        path.write_bytes(render_bytes(report, png, fmt))  # type: ignore[arg-type]
        written.append(path)
    if png is not None:
        path = folder / f"{stem}-overlay.png"
        path.write_bytes(png)
        written.append(path)
    return written
