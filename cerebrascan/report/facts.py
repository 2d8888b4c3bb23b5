"""The findings as short, pre-formatted statements: what every writer may say.

Both writers and the grounding checker use these strings, so a number is rounded once, here:
volumes to 0.1 mL, lengths and distances to 0.1 mm, areas to 1 mm², confidences to whole
percent, scores to 0.01. The LLM is given exactly this dictionary; the checker allows exactly
the numbers, sides, structures and categories that occur in its values.
"""

from __future__ import annotations

from typing import Any

from schemas.report import StudyReport

NOT_AVAILABLE = "not available"


def fmt_ml(value: float) -> str:
    """Volume as prose, 0.1 mL."""
    return f"{value:.1f} mL"


def fmt_mm(value: float) -> str:
    """Length or distance as prose, 0.1 mm."""
    return f"{value:.1f} mm"


def fmt_mm2(value: float) -> str:
    """Area as prose, whole mm²."""
    return f"{value:.0f} mm²"


def fmt_percent(fraction: float) -> str:
    """A confidence in [0, 1] as whole percent."""
    return f"{100.0 * fraction:.0f}%"


def fmt_ras(point: tuple[float, float, float]) -> str:
    """Scanner RAS coordinates, 0.1 mm."""
    return "(" + ", ".join(f"{c:.1f}" for c in point) + ") mm"


def report_facts(report: StudyReport) -> dict[str, Any]:
    """The findings a narrative may mention, as JSON-ready pre-formatted values.

    Sections that are not available say so, without the reason (the report's sections give
    it): the prompt must fit small context windows.
    """
    findings = report.findings
    facts: dict[str, Any] = {
        "sub_region_volumes": {r.code: fmt_ml(r.volume_ml) for r in findings.sub_regions},
    }
    if findings.location_status.available:
        location: dict[str, Any] = {
            "hemisphere": findings.hemisphere or "no tumour",
            "lesion_count": findings.lesion_count,
        }
        if findings.max_diameter_mm is not None:
            location["maximum_diameter"] = fmt_mm(findings.max_diameter_mm)
        if findings.rano is not None:
            location["enhancing_bidimensional"] = (
                f"{fmt_mm(findings.rano.longest_diameter_mm)} x "
                f"{fmt_mm(findings.rano.perpendicular_diameter_mm)} "
                f"(product {fmt_mm2(findings.rano.product_mm2)}, "
                f"{'measurable' if findings.rano.measurable else 'non-measurable'})"
            )
        facts["location_and_spread"] = location
    else:
        facts["location_and_spread"] = NOT_AVAILABLE
    facts["structures_involved"] = {
        s.name: f"{fmt_ml(s.overlap_ml)} overlap" for s in findings.involved_structures
    }
    nogo = report.structures_at_risk
    if nogo.status.available:
        facts["no_go_structures"] = {
            s.name: (
                f"{s.risk} risk, "
                + ("distance unknown" if s.min_distance_mm is None else fmt_mm(s.min_distance_mm))
            )
            for s in nogo.structures
        }
        facts["highest_risk"] = f"{nogo.highest_risk} risk"
    else:
        facts["no_go_structures"] = NOT_AVAILABLE
    targets = report.biopsy_targets
    if targets.status.available:
        facts["biopsy_targets"] = [
            f"target {t.rank}: RAS {fmt_ras(t.ras_mm)}, score {t.score:.2f}"
            + (
                f", {fmt_mm(t.nearest_excluded_mm)} from {t.nearest_excluded_structure}"
                if t.nearest_excluded_structure and t.nearest_excluded_mm is not None
                else ""
            )
            for t in targets.targets
        ]
    else:
        facts["biopsy_targets"] = NOT_AVAILABLE
    for key, opinion in (
        ("classification", report.classification),
        ("radiogenomics", report.radiogenomics),
    ):
        if opinion.status.available:
            facts[key] = {
                p.name: p.value
                + ("" if p.confidence is None else f" (confidence {fmt_percent(p.confidence)})")
                for p in opinion.predictions
            }
            facts[f"{key}_notice"] = opinion.notice
        else:
            facts[key] = NOT_AVAILABLE
    change = report.change
    if change.status.available:
        facts["change_since_prior"] = {
            "category": change.category or "not stated",
            **{item.name: item.value for item in change.items},
        }
    else:
        facts["change_since_prior"] = NOT_AVAILABLE
    quality = report.quality
    if quality.status.available:
        facts["quality"] = {
            "outcome": "passed" if quality.passed else "failed",
            "flags": [f"{f.severity}: {f.code.replace('_', ' ')}" for f in quality.flags],
        }
    else:
        facts["quality"] = NOT_AVAILABLE
    facts["notice"] = report.notice
    return facts
