"""Deterministic narrative (findings and impression) from the report sections; no model.

It uses only the formatters of :mod:`cerebrascan.report.facts`, so its text passes the
grounding checker by construction (``tests/test_report.py`` checks that it does).
"""

from __future__ import annotations

from schemas.report import Narrative, StudyReport

from .facts import fmt_ml, fmt_mm, fmt_mm2, fmt_percent


def write_narrative(report: StudyReport) -> Narrative:
    """Findings and impression paragraphs of ``report``."""
    return Narrative(findings=_findings(report), impression=_impression(report))


def _volumes(report: StudyReport) -> dict[str, float]:
    return {r.code: r.volume_ml for r in report.findings.sub_regions}


def _findings(report: StudyReport) -> str:
    findings = report.findings
    volumes = _volumes(report)
    if volumes.get("WT", 0.0) <= 0.0:
        return "No tumour was segmented."
    sentences = []
    where = ""
    if findings.location_status.available and findings.hemisphere:
        where = (
            " at the midline"
            if findings.hemisphere == "midline"
            else f" in the {findings.hemisphere} hemisphere"
        )
    lesions = ""
    if findings.lesion_count is not None:
        lesions = (
            "a single lesion" if findings.lesion_count == 1 else f"{findings.lesion_count} lesions"
        )
        lesions = f" ({lesions})"
    sentences.append(
        f"Segmented tumour{where}{lesions} with a whole-tumour volume of {fmt_ml(volumes['WT'])}."
    )
    parts = [
        f"enhancing tumour {fmt_ml(volumes['ET'])}" if "ET" in volumes else "",
        f"non-enhancing core {fmt_ml(volumes['NETC'])}" if "NETC" in volumes else "",
        f"surrounding FLAIR hyperintensity {fmt_ml(volumes['SNFH'])}" if "SNFH" in volumes else "",
    ]
    sentences.append("Sub-regions: " + ", ".join(p for p in parts if p) + ".")
    if "TC" in volumes:
        sentences.append(f"Tumour core {fmt_ml(volumes['TC'])}.")
    if findings.max_diameter_mm is not None:
        sentences.append(f"Maximum diameter {fmt_mm(findings.max_diameter_mm)}.")
    if findings.rano is not None:
        rano = findings.rano
        measurable = "measurable" if rano.measurable else "non-measurable"
        sentences.append(
            f"Enhancing tumour bidimensional product {fmt_mm2(rano.product_mm2)} "
            f"({fmt_mm(rano.longest_diameter_mm)} x {fmt_mm(rano.perpendicular_diameter_mm)}, "
            f"{measurable})."
        )
    if findings.involved_structures:
        names = ", ".join(
            f"{s.name} ({fmt_ml(s.overlap_ml)})" for s in findings.involved_structures
        )
        sentences.append(f"The tumour extends into: {names}.")
    if not findings.location_status.available:
        sentences.append("Location and spread not available.")
    return " ".join(sentences)


def _impression(report: StudyReport) -> str:
    volumes = _volumes(report)
    findings = report.findings
    if volumes.get("WT", 0.0) <= 0.0:
        lines = ["No segmented tumour."]
    else:
        where = (
            f" in the {findings.hemisphere} hemisphere"
            if findings.hemisphere in ("left", "right")
            else ""
        )
        lines = [
            f"Tumour{where} of {fmt_ml(volumes['WT'])} "
            f"(enhancing {fmt_ml(volumes.get('ET', 0.0))})."
        ]
    nogo = report.structures_at_risk
    if nogo.status.available:
        at_risk = [s.name for s in nogo.structures if s.risk == "high"]
        if at_risk:
            lines.append("High risk structures: " + ", ".join(at_risk) + ".")
    for title, opinion in (
        ("Classification", report.classification),
        ("Radiogenomics", report.radiogenomics),
    ):
        if opinion.status.available and opinion.predictions:
            stated = "; ".join(
                f"{p.name} {p.value}"
                + ("" if p.confidence is None else f" ({fmt_percent(p.confidence)})")
                for p in opinion.predictions[:4]
            )
            lines.append(f"{title} (research use only): {stated}.")
    if report.change.status.available and report.change.category:
        lines.append(f"Change since prior: {report.change.category}.")
    quality = report.quality
    if quality.status.available and quality.passed is False:
        lines.append("Quality control failed; interpret with caution.")
    lines.append("Research use only; not a clinical finding.")
    return " ".join(lines)
