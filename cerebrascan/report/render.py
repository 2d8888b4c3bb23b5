"""Render a :class:`~schemas.report.StudyReport` as Markdown, HTML (jinja2, autoescaped) or PDF
(ReportLab). Pure formatting: the key image arrives as PNG bytes, nothing is read or written.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from xml.sax.saxutils import escape

import jinja2
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    Flowable,
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from schemas.report import ModelOpinion, StudyReport

from .facts import fmt_ml, fmt_mm, fmt_mm2, fmt_percent, fmt_ras

TEMPLATES = Path(__file__).resolve().parent / "templates"
RESEARCH = "research use only"
FORMATTERS = SimpleNamespace(ml=fmt_ml, mm=fmt_mm, mm2=fmt_mm2, percent=fmt_percent, ras=fmt_ras)
_ENVIRONMENTS: dict[bool, jinja2.Environment] = {}


def _environment(autoescape: bool) -> jinja2.Environment:
    if autoescape not in _ENVIRONMENTS:
        _ENVIRONMENTS[autoescape] = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            trim_blocks=False,
            keep_trailing_newline=True,
        )
    return _ENVIRONMENTS[autoescape]


MONTAGE_CAPTION = (
    "Axial montage: slices evenly spaced through the tumour, labels in the palette colours "
    "(NETC red, SNFH green, ET yellow); radiological display, patient's right on the left."
)


def writer_summary(report: StudyReport) -> str:
    """One line saying who wrote the narrative and, after a fallback, why (the fallback's
    reason holds codes, counts and lengths, never the endpoint's text)."""
    writer = report.writer
    if writer.used == "llm":
        return (
            f"Narrative written by an LLM ({writer.model or 'unnamed model'}) that may only "
            f"rephrase the findings; {writer.claims_checked} claims checked against them. "
            "Tables are generated from the findings directly."
        )
    if writer.requested == "llm":
        return (
            "Narrative by the deterministic template; the LLM narrative was not used: "
            f"{writer.fallback_reason}."
        )
    return "Narrative by the deterministic template writer (no language model)."


def overlay_caption(report: StudyReport) -> str:
    """Caption of the key image."""
    overlay = report.overlay
    if not overlay.shown:
        return f"Key image not shown: {overlay.reason}"
    on = {
        "t1c": "over t1c",
        "registration_reference": "over the study's stored registration image",
    }.get(overlay.background or "", "alone (no image volume stored)")
    area = (
        ""
        if overlay.tumour_area_mm2 is None
        else f", tumour area {overlay.tumour_area_mm2:.0f} mm²"
    )
    return (
        f"Slice {overlay.slice_index} (voxel axis {overlay.slice_axis}) with the largest tumour "
        f"area{area}: labels {on}; NETC red, SNFH green, ET yellow; radiological convention "
        "(patient's right on the left)."
    )


def _context(
    report: StudyReport, image_src: str | None, montage_src: str | None = None
) -> dict[str, object]:
    return {
        "r": report,
        "f": FORMATTERS,
        "research": RESEARCH,
        "image_src": image_src or "",
        "montage_src": montage_src or "",
        "montage_caption": MONTAGE_CAPTION,
        "overlay_caption": overlay_caption(report),
        "writer_summary": writer_summary(report),
    }


def to_markdown(report: StudyReport) -> str:
    """Markdown; the key image is linked by its URL."""
    return (
        _environment(False)
        .get_template("report.md.j2")
        .render(_context(report, report.overlay.url))
    )


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_html(
    report: StudyReport, overlay_png: bytes | None, montage_png: bytes | None = None
) -> str:
    """Self-contained HTML (key image and montage inline as data URIs), values autoescaped."""
    context = _context(report, _data_uri(overlay_png), _data_uri(montage_png))
    return _environment(True).get_template("report.html.j2").render(context)


def to_pdf(
    report: StudyReport, overlay_png: bytes | None, montage_png: bytes | None = None
) -> bytes:
    """A4 PDF with the same sections as the HTML (the montage after the key image)."""
    styles = getSampleStyleSheet()
    body = styles["BodyText"]
    small = ParagraphStyle("small", parent=body, fontSize=8, textColor=colors.HexColor("#555555"))
    notice = ParagraphStyle(
        "notice",
        parent=body,
        backColor=colors.HexColor("#fff3cd"),
        borderColor=colors.HexColor("#e0c36c"),
        borderWidth=0.5,
        borderPadding=4,
        fontName="Helvetica-Bold",
    )
    h2 = styles["Heading2"]

    def para(text: str, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(escape(text), style)

    def table(rows: list[list[str]]) -> Table:
        grid = Table(
            [[para(cell, small if i else body) for cell in row] for i, row in enumerate(rows)],
            hAlign="LEFT",
        )
        grid.setStyle(
            TableStyle(
                [
                    ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ]
            )
        )
        return grid

    def not_available(reason: str | None) -> Paragraph:
        return para(f"Not available: {reason}", small)

    tech = report.technique
    story: list[Flowable] = [
        Paragraph(escape(report.title), styles["Title"]),
        para(report.notice, notice),
        Spacer(1, 4),
        para(
            f"Study {tech.study_id} · analysed {tech.analysed_at:%Y-%m-%d %H:%M} UTC"
            + (f" · acquired {tech.study_date}" if tech.study_date else "")
            + f" · report generated {report.generated_at:%Y-%m-%d %H:%M} UTC",
            small,
        ),
        para("Study and technique", h2),
        para(
            f"Sequences {', '.join(tech.modalities)}; grid {' x '.join(map(str, tech.shape))} "
            f"voxels, spacing {' x '.join(f'{s:g}' for s in tech.spacing_mm)} mm, "
            f"{tech.orientation}. Model {tech.model_name} version {tech.model_version} "
            f"({tech.model_alias}, {tech.runner}, trained on {tech.trained_on}). Analyzers: "
            + (", ".join(f"{n} {v}" for n, v in tech.analyzer_versions.items()) or "none")
            + "."
        ),
        para("Findings", h2),
        para(report.narrative.findings),
        table(
            [["Sub-region", "Volume"]]
            + [[f"{s.code} — {s.name}", fmt_ml(s.volume_ml)] for s in report.findings.sub_regions]
        ),
    ]
    if overlay_png is not None:
        image = Image(io.BytesIO(overlay_png), width=80 * mm, height=80 * mm, kind="proportional")
        story.append(KeepTogether([image, para(overlay_caption(report), small)]))
    else:
        story.append(para(overlay_caption(report), small))
    if montage_png is not None:
        montage = Image(
            io.BytesIO(montage_png), width=150 * mm, height=150 * mm, kind="proportional"
        )
        story.append(KeepTogether([montage, para(MONTAGE_CAPTION, small)]))
    story.append(
        para(
            f"More views (on the server): /studies/{report.technique.study_id}/viewer (3D viewer), "
            f"/studies/{report.technique.study_id}/views/montage.png (montage).",
            small,
        )
    )
    for title, opinion in (
        ("Classification", report.classification),
        ("Radiogenomics", report.radiogenomics),
    ):
        story.append(para(f"{title} ({RESEARCH})", h2))
        story.extend(_opinion_flowables(opinion, para, small))
    story.append(para("Biopsy targets", h2))
    targets = report.biopsy_targets
    if targets.status.available and targets.targets:
        story.append(
            table(
                [["Rank", "RAS (mm)", "Score", "Nearest excluded structure"]]
                + [
                    [
                        str(t.rank),
                        fmt_ras(t.ras_mm),
                        f"{t.score:.2f}",
                        f"{t.nearest_excluded_structure}, {fmt_mm(t.nearest_excluded_mm)}"
                        if t.nearest_excluded_structure and t.nearest_excluded_mm is not None
                        else "—",
                    ]
                    for t in targets.targets
                ]
            )
        )
    elif targets.status.available:
        story.append(para("No target proposed. " + " ".join(targets.notes)))
    else:
        story.append(not_available(targets.status.reason))
    story.append(para("No-go structures at risk", h2))
    nogo = report.structures_at_risk
    if nogo.status.available:
        story.append(para(f"Highest risk: {nogo.highest_risk}."))
        story.append(
            table(
                [["Structure", "Risk", "Distance", "Overlap"]]
                + [
                    [
                        s.name,
                        s.risk,
                        "—" if s.min_distance_mm is None else fmt_mm(s.min_distance_mm),
                        fmt_ml(s.overlap_ml),
                    ]
                    for s in nogo.structures
                ]
            )
        )
    else:
        story.append(not_available(nogo.status.reason))
    story.append(para("Change since prior studies", h2))
    change = report.change
    if change.status.available:
        if change.category:
            story.append(para(f"Category: {change.category}"))
        story.extend(para(f"{i.name}: {i.value}", small) for i in change.items)
    else:
        story.append(not_available(change.status.reason))
    story.append(para("Quality", h2))
    quality = report.quality
    if quality.status.available:
        story.append(para("Passed." if quality.passed else "Failed."))
        story.extend(para(f"{q.severity} {q.code}: {q.message}", small) for q in quality.flags)
    else:
        story.append(not_available(quality.status.reason))
    story.append(para("Impression", h2))
    story.append(Paragraph(f"<b>{escape(report.narrative.impression)}</b>", body))
    story.append(Spacer(1, 6))
    story.append(para(writer_summary(report), small))
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=report.title,
        author="CerebraScan (research use only)",
    )
    document.build(story)
    return buffer.getvalue()


def _opinion_flowables(
    opinion: ModelOpinion,
    para: Callable[..., Paragraph],
    small: ParagraphStyle,
) -> list[Flowable]:
    """Predictions with confidence and the research-use notice, or why there are none."""
    if not opinion.status.available:
        return [para(f"Not available: {opinion.status.reason}", small)]
    lines: list[Flowable] = [
        para(
            f"{p.name}: {p.value}"
            + ("" if p.confidence is None else f" (confidence {fmt_percent(p.confidence)})")
        )
        for p in opinion.predictions
    ]
    return [*lines, para(opinion.notice, small)]
