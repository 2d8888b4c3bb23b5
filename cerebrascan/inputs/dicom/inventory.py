"""Describe an upload from its headers: series, proposed contrasts, geometry checks (no I/O).

This is the answer of ``POST /dicom/inspect``: what the analysis would use, and what it would
refuse, without decoding a pixel.
"""

from __future__ import annotations

from typing import Any

from pydicom.uid import UID

from cerebrascan.inputs.dicom.geometry import (
    GeometryError,
    check_stack,
    series_frames,
    series_voxel_size,
)
from cerebrascan.inputs.dicom.index import IndexedSeries, StudyIndex, plane_name
from cerebrascan.inputs.dicom.selection import Selection
from cerebrascan.inputs.dicom.settings import DicomSettings
from schemas.dicom import DicomInventory, GeometryCheck, RoleProposal, SeriesSummary

MAX_SKIPPED_EXAMPLES = 20


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def series_summary(series: IndexedSeries) -> SeriesSummary:
    """The inventory line of one series."""
    plane = plane_name(series.header)
    image_type = series.attribute("ImageType")
    syntax = getattr(series.header.get("file_meta"), "TransferSyntaxUID", None)
    return SeriesSummary(
        series_uid=series.series_uid,
        study_uid=series.study_uid,
        number=_int(series.attribute("SeriesNumber")),
        description=_text(series.attribute("SeriesDescription")),
        modality=_text(series.attribute("Modality")),
        image_type=[str(v) for v in image_type] if image_type is not None else [],
        orientation=plane[0] if plane else None,
        oblique_deg=round(plane[1], 2) if plane else None,
        slice_count=series.slice_count,
        instance_count=len(series.instances),
        multiframe=series.is_multiframe,
        voxel_size_mm=series_voxel_size(series),
        acquisition=_text(series.attribute("MRAcquisitionType")),
        repetition_time_ms=_float(series.attribute("RepetitionTime")),
        echo_time_ms=_float(series.attribute("EchoTime")),
        inversion_time_ms=_float(series.attribute("InversionTime")),
        contrast_agent=_text(series.attribute("ContrastBolusAgent")),
        frame_of_reference_uid=_text(series.attribute("FrameOfReferenceUID")),
        transfer_syntax=UID(str(syntax)).name if syntax else None,
    )


def geometry_check(series: IndexedSeries, settings: DicomSettings) -> GeometryCheck:
    """The header-only geometry check of one series (see :func:`.geometry.check_stack`)."""
    try:
        stack = check_stack(
            series_frames(series),
            max_gap_ratio=settings.max_slice_gap_ratio,
            tolerance_mm=settings.spacing_tolerance_mm,
        )
    except GeometryError as exc:
        return GeometryCheck(series_uid=series.series_uid, ok=False, problem=str(exc))
    return GeometryCheck(
        series_uid=series.series_uid, ok=True, slice_step_mm=round(stack.slice_step_mm, 4)
    )


def inventory(
    index: StudyIndex, selection: Selection, roles: tuple[str, ...], settings: DicomSettings
) -> DicomInventory:
    """The inspection answer: series, proposals per contrast, checks and blocking problems."""
    proposals = {}
    checks = []
    problems = list(selection.problems)
    for role in roles:
        choice = selection.choices.get(role)
        candidates = list(selection.candidates.get(role, ()))
        if choice is None:
            proposals[role] = RoleProposal(
                series_uid=None,
                reason=next((p for p in selection.problems if role in p), "no candidate"),
                candidates=candidates,
            )
            continue
        proposals[role] = RoleProposal(
            series_uid=choice.series.series_uid,
            rule=choice.rule,
            reason=choice.reason,
            candidates=candidates,
        )
        check = geometry_check(choice.series, settings)
        checks.append(check)
        if not check.ok:
            problems.append(f"{role}: series {choice.series.series_uid}: {check.problem}")
    return DicomInventory(
        studies=list(index.study_uids),
        series=[series_summary(s) for s in index.series],
        roles=proposals,
        rejected=selection.rejected,
        checks=checks,
        problems=problems,
        skipped_files=len(index.skipped),
        skipped_examples=list(index.skipped[:MAX_SKIPPED_EXAMPLES]),
    )
