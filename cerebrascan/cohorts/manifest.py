"""Parse and check a cohort manifest (CSV or Parquet) before any study is touched.

A manifest has one row per study: ``study_key``, optional ``patient_id`` and ``study_date``,
and either the four contrasts (``t1n, t1c, t2w, t2f``: local paths or ``s3://`` URIs) or a
``dicom`` column (a zip or a folder of one study; optional ``skull_stripped``: true when its
series are already brain-extracted). Every problem is refused as a whole with the line named
(CSV: the physical line, header = line 1; Parquet: ``row N``, 1-based), so a cohort never
half-runs on a bad file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import PurePosixPath

from cerebrascan.errors import InputError
from schemas.model_spec import MODALITIES

STUDY_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A study key names a folder under ``studies/``: letters, digits, ``.``, ``_``, ``-``."""

ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
KNOWN_COLUMNS = frozenset(
    {"study_key", "patient_id", "study_date", "dicom", "skull_stripped", *MODALITIES}
)
TRUE_WORDS = frozenset({"true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0", ""})
MAX_MANIFEST_ROWS = 1_000_000


class ManifestError(InputError):
    """The manifest cannot be run; the message names the line and the bad value (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400, field="manifest")


@dataclass(frozen=True)
class ManifestEntry:
    """One study of a cohort, as the manifest names it."""

    study_key: str
    line: str
    """Where the manifest names it: ``line 3`` (CSV) or ``row 2`` (Parquet)."""
    contrasts: Mapping[str, str] = field(default_factory=dict)
    """Modality -> local path or ``s3://`` URI; empty for a ``dicom`` study."""
    dicom: str | None = None
    skull_stripped: bool = False
    """A ``dicom`` study's series are brain-extracted already (no brain extraction)."""
    patient_id: str | None = None
    study_date: str | None = None
    """ISO ``YYYY-MM-DD`` or None."""

    def as_row(self) -> dict[str, str | bool | None]:
        """A flat dict (a Ray Data row)."""
        row: dict[str, str | bool | None] = {
            "study_key": self.study_key,
            "line": self.line,
            "dicom": self.dicom,
            "skull_stripped": self.skull_stripped,
            "patient_id": self.patient_id,
            "study_date": self.study_date,
        }
        for modality in MODALITIES:
            row[modality] = self.contrasts.get(modality)
        return row


def read_manifest(data: bytes, name: str) -> list[ManifestEntry]:
    """Decode and check a manifest; ``name`` (its file name or URI) selects CSV or Parquet.

    Args:
        data: the file's bytes.
        name: ends in ``.parquet`` / ``.pq`` for Parquet, anything else is read as CSV.

    Returns:
        The entries in manifest order.

    Raises:
        ManifestError: unreadable file, missing or unknown columns, a row with the wrong
            number of fields, an empty or unsafe ``study_key``, a duplicate ``study_key``, a
            row with neither all four contrasts nor ``dicom`` (or both), a bad ``study_date``.
    """
    suffix = PurePosixPath(name.split("?", 1)[0]).suffix.lower()
    if suffix in (".parquet", ".pq"):
        columns, records = _parquet_records(data)
    else:
        columns, records = _csv_records(data)
    return check_manifest(columns, records)


def _csv_records(data: bytes) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"CSV is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise ManifestError("CSV is empty: expected a header line with study_key")
        columns = [c.strip() for c in header]
        records: list[tuple[str, dict[str, str]]] = []
        line = reader.line_num
        for fields in reader:
            where = f"line {line + 1}"
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue  # blank lines carry no study
            if len(fields) != len(columns):
                raise ManifestError(
                    f"{where}: {len(fields)} fields, the header has {len(columns)} "
                    f"({','.join(columns)})"
                )
            records.append((where, dict(zip(columns, fields, strict=True))))
            if len(records) > MAX_MANIFEST_ROWS:
                raise ManifestError(f"more than {MAX_MANIFEST_ROWS} studies; split the cohort")
    except csv.Error as exc:
        raise ManifestError(f"line {reader.line_num}: malformed CSV ({exc})") from None
    return columns, records


def _parquet_records(data: bytes) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"not a readable Parquet file ({exc})") from None
    if table.num_rows > MAX_MANIFEST_ROWS:
        raise ManifestError(f"more than {MAX_MANIFEST_ROWS} studies; split the cohort")
    columns = list(table.column_names)
    records = []
    for index, row in enumerate(table.to_pylist(), start=1):
        values = {k: "" if v is None else str(v) for k, v in row.items()}
        records.append((f"row {index}", values))
    return columns, records


def check_manifest(
    columns: Sequence[str], records: Iterable[tuple[str, Mapping[str, str]]]
) -> list[ManifestEntry]:
    """Check a decoded manifest table (see :func:`read_manifest`)."""
    if "study_key" not in columns:
        raise ManifestError(f"no study_key column (columns: {', '.join(columns) or 'none'})")
    unknown = sorted(set(columns) - KNOWN_COLUMNS)
    if unknown:
        raise ManifestError(
            f"unknown column(s) {unknown}; expected study_key, patient_id, study_date and "
            f"either {', '.join(MODALITIES)} or dicom"
        )
    duplicated = sorted({c for c in columns if list(columns).count(c) > 1})
    if duplicated:
        raise ManifestError(f"column(s) {duplicated} appear more than once in the header")
    has_contrasts = [m for m in MODALITIES if m in columns]
    if has_contrasts and len(has_contrasts) != len(MODALITIES):
        missing = [m for m in MODALITIES if m not in columns]
        raise ManifestError(f"contrast column(s) {missing} missing (all four or none)")
    if not has_contrasts and "dicom" not in columns:
        raise ManifestError(f"no image columns: expected {', '.join(MODALITIES)} or dicom")
    entries: list[ManifestEntry] = []
    first_line: dict[str, str] = {}
    for where, values in records:
        entry = _entry(where, values)
        if entry.study_key in first_line:
            raise ManifestError(
                f"{where}: study_key {entry.study_key!r} duplicates {first_line[entry.study_key]}"
            )
        first_line[entry.study_key] = where
        entries.append(entry)
    if not entries:
        raise ManifestError("the manifest lists no study")
    return entries


def _entry(where: str, values: Mapping[str, str]) -> ManifestEntry:
    key = (values.get("study_key") or "").strip()
    if not key:
        raise ManifestError(f"{where}: empty study_key")
    if not STUDY_KEY_PATTERN.match(key):
        raise ManifestError(
            f"{where}: study_key {key[:60]!r} must be 1-128 letters, digits, '.', '_' or '-' "
            "starting with a letter or digit (it names a folder)"
        )
    contrasts = {m: (values.get(m) or "").strip() for m in MODALITIES}
    given = [m for m, v in contrasts.items() if v]
    dicom = (values.get("dicom") or "").strip() or None
    if dicom and given:
        raise ManifestError(f"{where}: study {key!r} has both dicom and contrast paths {given}")
    if not dicom and len(given) != len(MODALITIES):
        missing = [m for m in MODALITIES if m not in given]
        raise ManifestError(f"{where}: study {key!r} has no {', '.join(missing)} (and no dicom)")
    study_date = (values.get("study_date") or "").strip() or None
    if study_date is not None:
        try:
            if not ISO_DATE.match(study_date):
                raise ValueError("not YYYY-MM-DD")
            date.fromisoformat(study_date)
        except ValueError:
            raise ManifestError(
                f"{where}: study_date {study_date[:40]!r} is not an ISO date (YYYY-MM-DD)"
            ) from None
    patient_id = (values.get("patient_id") or "").strip() or None
    stripped_text = (values.get("skull_stripped") or "").strip().lower()
    if stripped_text not in TRUE_WORDS | FALSE_WORDS:
        raise ManifestError(
            f"{where}: skull_stripped {stripped_text[:20]!r} is not true/false (yes/no, 1/0)"
        )
    if stripped_text in TRUE_WORDS and not dicom:
        raise ManifestError(f"{where}: skull_stripped applies to a dicom study only")
    return ManifestEntry(
        study_key=key,
        line=where,
        contrasts=contrasts if not dicom else {},
        dicom=dicom,
        skull_stripped=stripped_text in TRUE_WORDS,
        patient_id=patient_id,
        study_date=study_date,
    )
