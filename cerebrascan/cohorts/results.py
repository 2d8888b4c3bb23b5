"""A cohort's table: one row per study from an ``/analyze``-shaped answer, and the summary.

Pure data shaping (no I/O): :mod:`cerebrascan.cohorts.ledger` writes what this builds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

Status = Literal["ok", "input_error", "failed"]
STATUSES: tuple[Status, ...] = ("ok", "input_error", "failed")

REGIONS: tuple[str, ...] = ("NETC", "SNFH", "ET", "TC", "WT")
CLASSIFIER_TASKS: dict[str, tuple[str, ...]] = {
    "classification": ("tumour_type", "grade"),
    "radiogenomics": ("idh", "mgmt"),
}
STAGES: tuple[str, ...] = (
    "fetch",
    "decode",
    "preprocess",
    "inference",
    "postprocess",
    "analyzers",
    "store",
    "write",
)
NOT_ASSESSABLE = "not assessable"

COLUMNS: tuple[str, ...] = (
    "study_key",
    "status",
    "error",
    "model_name",
    "model_version",
    *(f"{region}_ml" for region in REGIONS),
    *(
        column
        for tasks in CLASSIFIER_TASKS.values()
        for task in tasks
        for column in (task, f"{task}_confidence")
    ),
    "highest_nogo_risk",
    "quality_passed",
    *(f"{stage}_s" for stage in STAGES),
    "total_s",
)
"""The columns of ``results.parquet`` in order."""


def empty_row(study_key: str, model_name: str, model_version: str) -> dict[str, Any]:
    """A row with every column, all results unknown."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(study_key=study_key, model_name=model_name, model_version=model_version)
    return row


def failure_row(
    study_key: str,
    model_name: str,
    model_version: str,
    status: Status,
    error: str,
    timings_s: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The row of a study that could not be analysed (``input_error`` or ``failed``)."""
    row = empty_row(study_key, model_name, model_version)
    row.update(status=status, error=error[:2000])
    _set_timings(row, timings_s or {})
    return row


def ok_row(
    study_key: str, response: Mapping[str, Any], timings_s: Mapping[str, float]
) -> dict[str, Any]:
    """The row of an analysed study from its ``/analyze`` answer (``AnalyzeResponse`` JSON).

    Args:
        study_key: the manifest's key.
        response: the answer, as ``AnalyzeResponse.model_dump(mode="json")``.
        timings_s: the cohort's own stage seconds (fetch, write); the answer's
            ``timings_ms`` fill the others.
    """
    model = response["model"]
    row = empty_row(study_key, str(model["name"]), str(model["version"]))
    row["status"] = "ok"
    volumes = response.get("volumes_ml") or {}
    for region in REGIONS:
        value = volumes.get(region)
        row[f"{region}_ml"] = None if value is None else float(value)
    analyzers = response.get("analyzers") or {}
    for analyzer, tasks in CLASSIFIER_TASKS.items():
        predictions = _predictions(analyzers.get(analyzer))
        for task in tasks:
            prediction = predictions.get(task)
            if prediction is None:
                continue
            if prediction.get("assessable"):
                row[task] = prediction.get("label")
                row[f"{task}_confidence"] = prediction.get("confidence")
            else:
                row[task] = NOT_ASSESSABLE
    nogo = _result(analyzers.get("nogo"))
    if nogo is not None:
        row["highest_nogo_risk"] = nogo.get("highest_risk")
    quality = _result(analyzers.get("quality"))
    if quality is not None:
        row["quality_passed"] = bool(quality.get("passed"))
    stage_seconds = {k: float(v) / 1000 for k, v in (response.get("timings_ms") or {}).items()}
    _set_timings(row, {**stage_seconds, **timings_s})
    return row


def _result(outcome: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not outcome or outcome.get("status") != "ok":
        return None
    result = outcome.get("result")
    return result if isinstance(result, Mapping) else None


def _predictions(outcome: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    result = _result(outcome)
    if result is None:
        return {}
    return {str(p.get("task")): p for p in result.get("predictions") or []}


def _set_timings(row: dict[str, Any], timings_s: Mapping[str, float]) -> None:
    for stage in STAGES:
        if stage in timings_s:
            row[f"{stage}_s"] = round(float(timings_s[stage]), 4)
    row["total_s"] = round(sum(float(timings_s.get(s, 0.0)) for s in STAGES), 4)


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per status, p50/p95 seconds per stage (ok studies) and failures by reason.

    A reason is the first part of the error (up to ``:``, or its first 80 characters), so a
    hundred missing objects count as one reason.
    """
    counts = Counter(str(row["status"]) for row in rows)
    summary: dict[str, Any] = {
        "studies": len(rows),
        "counts": {status: counts.get(status, 0) for status in STATUSES},
    }
    stages: dict[str, dict[str, float]] = {}
    ok_rows = [row for row in rows if row["status"] == "ok"]
    for stage in (*STAGES, "total"):
        values = [float(r[f"{stage}_s"]) for r in ok_rows if r.get(f"{stage}_s") is not None]
        if values:
            stages[stage] = {
                "p50_s": round(float(np.percentile(values, 50)), 4),
                "p95_s": round(float(np.percentile(values, 95)), 4),
            }
    summary["stages"] = stages
    reasons: Counter[str] = Counter()
    for row in rows:
        if row["status"] != "ok":
            reasons[f"{row['status']}: {failure_reason(str(row.get('error') or ''))}"] += 1
    summary["failures_by_reason"] = dict(reasons.most_common())
    models = sorted({f"{r['model_name']}@{r['model_version']}" for r in rows})
    summary["models"] = models
    return summary


def failure_reason(error: str) -> str:
    """A short, key-free category of an error message (for counting failures)."""
    head = error.split(":", 1)[0] if ":" in error[:80] else error[:80]
    return head.strip() or "unknown"
