"""Assemble a study's report from its stored findings (pure), choosing the writer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cerebrascan.report.settings import ReportSettings
from schemas.report import OverlayImage, StudyReport, WriterName, WriterRecord

from . import findings as sections
from . import llm_writer, template_writer
from .findings import ReportInputError

__all__ = ["ReportInputError", "build_report"]


def build_report(
    findings: Mapping[str, Any],
    overlay: OverlayImage,
    settings: ReportSettings,
    *,
    writer: WriterName | None = None,
    supplied_text: Mapping[str, str] | None = None,
) -> StudyReport:
    """The report of one study.

    Args:
        findings: the stored ``AnalyzeResponse`` JSON of the study.
        overlay: the key-image section (see :mod:`cerebrascan.report.study_reports`).
        settings: writer selection and LLM endpoint.
        writer: overrides ``settings.writer``.
        supplied_text: text that arrived with the request (passed to the LLM as quoted data);
            merged with the text stored with the findings.

    Raises:
        ReportInputError: the findings lack the core keys of an ``AnalyzeResponse``.
    """
    quoted = {**sections.supplied_text(findings), **dict(supplied_text or {})}
    technique = sections.technique(findings)
    technique.supplied_text_fields = sorted(quoted)
    report = StudyReport(
        notice=sections.research_notice(findings),
        generated_at=sections.now_utc(),
        technique=technique,
        findings=sections.tumour_findings(findings),
        classification=sections.model_opinion(findings, "classification"),
        radiogenomics=sections.model_opinion(findings, "radiogenomics"),
        biopsy_targets=sections.biopsy_targets(findings),
        structures_at_risk=sections.structures_at_risk(findings),
        change=sections.change_since_prior(findings),
        quality=sections.quality(findings),
        overlay=overlay,
        narrative={"findings": "", "impression": ""},
        writer=WriterRecord(requested="template", used="template"),
    )
    chosen = writer or settings.writer
    if chosen == "llm":
        report.narrative, report.writer = llm_writer.write_narrative(report, settings, quoted)
    else:
        report.narrative = template_writer.write_narrative(report)
    return report
