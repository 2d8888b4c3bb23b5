"""PNG plot of a patient's timeline (matplotlib, Agg canvas; no global pyplot state)."""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from schemas.timeline import Timeline

CATEGORY_LABELS = {
    "complete_response": "CR",
    "partial_response": "PR",
    "stable": "SD",
    "progression": "PD",
}


def timeline_png(timeline: Timeline) -> bytes:
    """Volumes per region over time, with each visit's overall response category.

    Args:
        timeline: the patient's timeline.

    Returns:
        PNG bytes.
    """
    figure = Figure(figsize=(8.0, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    dates: list[Any] = [visit.study_date for visit in timeline.visits]  # matplotlib dates
    for name, values in timeline.series_ml.items():
        width = 2.5 if name == timeline.response_region else 1.2
        axes.plot(dates, values, marker="o", linewidth=width, label=name)
    region_values = timeline.series_ml.get(timeline.response_region, [])
    for visit, value in zip(timeline.visits, region_values, strict=False):
        if visit.response_overall is not None:
            axes.annotate(
                CATEGORY_LABELS[visit.response_overall.category],
                (visit.study_date, value),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=9,
                fontweight="bold",
            )
    axes.set_xlabel("study date")
    axes.set_ylabel("volume (mL)")
    axes.set_title(
        f"Tumour volumes; response on {timeline.response_region} (research use only)",
        fontsize=10,
    )
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
