"""Cohort folders of the classifier pipeline: one ``truth.json`` per case and ``cohort.json``
(I/O; the records are drawn by :func:`cerebrascan.classifiers.cohort.sample_cohort`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_cohort_truth(records: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``<out_dir>/<case_id>/truth.json`` per case and ``cohort.json`` (all records).

    Returns:
        The path of ``cohort.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for record in records:
        folder = out_dir / record["case_id"]
        folder.mkdir(exist_ok=True)
        (folder / "truth.json").write_text(json.dumps(record, indent=2) + "\n")
    manifest = out_dir / "cohort.json"
    manifest.write_text(json.dumps(records, indent=1) + "\n")
    counts: dict[str, int] = {}
    for record in records:
        counts[record["rendered_type"]] = counts.get(record["rendered_type"], 0) + 1
    logger.info("cohort %s: %d cases %s", out_dir, len(records), counts)
    return manifest


def read_cohort(folder: Path) -> list[dict[str, Any]]:
    """The records of a cohort folder written by :func:`write_cohort_truth`.

    Raises:
        FileNotFoundError: the folder has no ``cohort.json``.
    """
    manifest = folder / "cohort.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist; run the cohort stage first")
    records: list[dict[str, Any]] = json.loads(manifest.read_text())
    return records
