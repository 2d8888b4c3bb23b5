"""Write a longitudinal phantom series (:mod:`cerebrascan.phantoms.series`) to disk.

``<out_dir>/<series_id>-V<k>/`` per visit (the four modalities, the labels and ``truth.json``,
as :func:`cerebrascan.phantoms.writer.write_case` writes a case), plus ``series.json``: the plan
and each visit's folder, date, volumes, pose and expected response categories.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cerebrascan.phantoms.series import PhantomVisit, SeriesPlan
from cerebrascan.phantoms.writer import write_case

SERIES_FILE = "series.json"


def write_series(visits: list[PhantomVisit], plan: SeriesPlan, out_dir: Path) -> Path:
    """Write every visit and ``series.json``.

    Args:
        visits: the rendered visits.
        plan: the plan they were rendered from.
        out_dir: parent folder (created).

    Returns:
        The path of ``series.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for visit in visits:
        folder = write_case(visit.case, out_dir)
        entries.append({"folder": folder.name, **visit.truth})
    plan_dict = dataclasses.asdict(plan)
    plan_dict["first_date"] = plan.first_date.isoformat()
    path = out_dir / SERIES_FILE
    path.write_text(json.dumps({"plan": plan_dict, "visits": entries}, indent=2) + "\n")
    return path
