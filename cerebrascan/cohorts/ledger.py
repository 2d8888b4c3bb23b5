"""A cohort's output folder (all its writes): the per-study ledger, study files, the table.

Layout under ``--out`` (a folder or ``s3://`` prefix)::

    ledger/<study_key>.json          one row per finished study, written whole when it ends
    studies/<study_key>/segmentation.nii.gz, result.json
    results.parquet, summary.json    rebuilt from the ledger at the end of every run

The ledger is the resume point: a study whose row names the model version in use is done; a
row of another model version is redone. One file per study key means a run killed midway and
resumed still ends with exactly one row per study.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cerebrascan.cohorts.locations import MissingObjectError, OutputLocation
from cerebrascan.cohorts.results import COLUMNS

logger = logging.getLogger(__name__)

LEDGER_FOLDER = "ledger"
STUDIES_FOLDER = "studies"
RESULTS_FILE = "results.parquet"
SUMMARY_FILE = "summary.json"
PROGRESS_FILE = "progress.json"
SEGMENTATION_NAME = "segmentation.nii.gz"
RESULT_NAME = "result.json"

_FLOAT_COLUMNS = frozenset(
    c for c in COLUMNS if c.endswith(("_ml", "_s", "_confidence")) and c != "study_key"
)


def ledger_name(study_key: str) -> str:
    """The ledger file of a study."""
    return f"{LEDGER_FOLDER}/{study_key}.json"


def study_file(study_key: str, name: str) -> str:
    """A file of a study's own folder."""
    return f"{STUDIES_FOLDER}/{study_key}/{name}"


def write_ledger_row(out: OutputLocation, row: Mapping[str, Any]) -> None:
    """Record a finished study (its folder's files are written before this)."""
    out.write_bytes(ledger_name(str(row["study_key"])), json.dumps(dict(row)).encode("utf-8"))


def read_ledger(out: OutputLocation) -> dict[str, dict[str, Any]]:
    """Every ledger row under ``out``, by study key (unreadable pieces are skipped, so redone)."""
    rows: dict[str, dict[str, Any]] = {}
    for name in out.list_names(LEDGER_FOLDER):
        if not name.endswith(".json"):
            continue
        try:
            row = json.loads(out.read_bytes(name))
        except (ValueError, MissingObjectError) as exc:
            # the piece's name is the study key, which a lab may have made identifying
            logger.warning(
                "a ledger piece is unreadable (%s); its study runs again", type(exc).__name__
            )
            continue
        if isinstance(row, dict) and "study_key" in row:
            rows[str(row["study_key"])] = row
    return rows


def is_done(
    row: Mapping[str, Any] | None, model_name: str, model_version: str, *, retry_failed: bool
) -> bool:
    """Whether a ledger row stands for this run: same model version, and not a failure to
    retry. A study whose input could not be read is done unless failures are retried too."""
    if row is None:
        return False
    if (row.get("model_name"), str(row.get("model_version"))) != (model_name, model_version):
        return False
    return not (retry_failed and row.get("status") != "ok")


def write_study_files(
    out: OutputLocation, study_key: str, segmentation_nifti: bytes, result_json: bytes
) -> None:
    """A study's segmentation and ``/analyze`` answer under ``studies/<study_key>/``."""
    out.write_bytes(study_file(study_key, SEGMENTATION_NAME), segmentation_nifti)
    out.write_bytes(study_file(study_key, RESULT_NAME), result_json)


def table_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """``results.parquet``: the rows in :data:`~cerebrascan.cohorts.results.COLUMNS` order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = []
    for column in COLUMNS:
        if column in _FLOAT_COLUMNS:
            kind = pa.float64()
        elif column == "quality_passed":
            kind = pa.bool_()
        else:
            kind = pa.string()
        fields.append(pa.field(column, kind))
    schema = pa.schema(fields)
    data = {column: [_cell(row.get(column), column) for row in rows] for column in COLUMNS}
    table = pa.Table.from_pydict(data, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _cell(value: Any, column: str) -> Any:
    if value is None:
        return None
    if column in _FLOAT_COLUMNS:
        return float(value)
    if column == "quality_passed":
        return bool(value)
    return str(value)


def write_results(
    out: OutputLocation,
    rows: Iterable[Mapping[str, Any]],
    summary: Mapping[str, Any],
) -> None:
    """Write ``results.parquet`` and ``summary.json``."""
    out.write_bytes(RESULTS_FILE, table_bytes(list(rows)))
    out.write_bytes(SUMMARY_FILE, (json.dumps(dict(summary), indent=2) + "\n").encode("utf-8"))


def write_progress(out: OutputLocation, progress: Mapping[str, Any]) -> None:
    """``progress.json``: where a running cohort stands (read by ``GET /cohorts/{id}``)."""
    out.write_bytes(PROGRESS_FILE, json.dumps(dict(progress)).encode("utf-8"))
