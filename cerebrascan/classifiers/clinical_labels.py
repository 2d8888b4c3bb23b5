"""Classifier labels from a clinical table as TCGA-GBM/LGG give it (parsing only, no I/O).

A CSV row per case; the columns are found by name (case-insensitive, spaces/underscores/dashes
ignored), the first of :data:`COLUMNS` present per target:

* case id (``case_id``, ``case_submitter_id``, ``bcr_patient_barcode``...): the case folder;
* idh (``IDH status``, ``IDH1_status``...): mutant / wildtype (``IDHmut``, ``WT``...);
* mgmt (``MGMT promoter status``, ``MGMT_status``...): methylated / unmethylated;
* grade (``Grade``, ``neoplasm_histologic_grade``...): ``G2``, ``II``, ``Grade III``,
  ``WHO 4``: WHO grade 1-4, 3-4 is high grade;
* type (``Histology``, ``histological_type``...): TCGA's glioma histologies (glioblastoma,
  astrocytoma, oligodendroglioma, oligoastrocytoma, GBM, LGG) are ``glioma``; a phantom
  tumour type name (``meningioma``...) is kept;
* age (``age_at_initial_pathologic_diagnosis``, ``Age (years at diagnosis)``, ``age``).

The full table is in docs/classifiers.md.
Anything else (``NA``, ``[Not Available]``, ``unknown``, empty) leaves that target unknown for
the case: the case is skipped for that task only, and the skips are counted.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

from cerebrascan.phantoms.tumour_types import TUMOUR_TYPES

COLUMNS: dict[str, tuple[str, ...]] = {
    "case_id": (
        "case_id", "case", "case_submitter_id", "bcr_patient_barcode", "patient_id",
        "BraTS21ID", "ID",
    ),
    "idh": ("IDH status", "IDH1_status", "IDH_status", "IDH"),
    "mgmt": ("MGMT promoter status", "MGMT_status", "mgmt_promoter_status", "MGMT"),
    "grade": ("Grade", "neoplasm_histologic_grade", "WHO grade", "tumor_grade"),
    "type": ("Histology", "histological_type", "primary_diagnosis", "tumour_type", "tumor_type"),
    "age": ("age_at_initial_pathologic_diagnosis", "Age (years at diagnosis)", "age"),
}  # fmt: skip
_IDH = {
    "mutant": True, "mutated": True, "mut": True, "idhmut": True, "idhmutant": True,
    "wildtype": False, "wt": False, "idhwt": False, "idhwildtype": False,
}  # fmt: skip
_MGMT = {"methylated": True, "unmethylated": False, "notmethylated": False}
_GLIOMA_HISTOLOGY = (
    "glioblastoma", "astrocytoma", "oligodendroglioma", "oligoastrocytoma", "gbm", "lgg",
    "glioma",
)  # fmt: skip
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4}


def _key(text: str) -> str:
    return re.sub(r"[\s_\-()]+", "", text.strip().lower())


def _word(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.strip().lower())


def parse_idh(value: str) -> bool | None:
    """True for IDH-mutant, False for wildtype, None when unknown."""
    return _IDH.get(_word(value))


def parse_mgmt(value: str) -> bool | None:
    """True for a methylated MGMT promoter, False for unmethylated, None when unknown."""
    return _MGMT.get(_word(value))


def parse_grade(value: str) -> int | None:
    """WHO grade 1-4 from ``G2``, ``II``, ``3``, ``Grade IV``, ``WHO 4``; None when unknown."""
    word = _word(value).removeprefix("who").removeprefix("grade").removeprefix("g")
    grade = _ROMAN.get(word) or (int(word) if word.isdigit() else None)
    return grade if grade in (1, 2, 3, 4) else None


def parse_tumour_type(value: str) -> str | None:
    """``glioma`` for TCGA's glioma histologies, a phantom tumour type as is, else None."""
    word = _word(value)
    if not word:
        return None
    if any(name in word for name in _GLIOMA_HISTOLOGY):
        return "glioma"
    for name in TUMOUR_TYPES:
        if _word(name) == word:
            return name
    return None


def parse_age(value: str) -> float | None:
    """Age in years, None when not a positive number."""
    try:
        age = float(value)
    except ValueError:
        return None
    return age if math.isfinite(age) and 0 < age < 130 else None


@dataclass
class ClinicalLabels:
    """Records in the cohort format (``case_id``, ``labels``) and what was skipped.

    Attributes:
        records: one per row with a case id; ``labels`` as
            :func:`cerebrascan.classifiers.cohort.sample_case` gives them (None: unknown).
        columns: target -> the CSV column it was read from.
        unknown: target -> rows whose value was missing or not understood.
    """

    records: list[dict[str, Any]]
    columns: dict[str, str]
    unknown: dict[str, int] = field(default_factory=dict)


def parse_clinical_csv(text: str) -> ClinicalLabels:
    """Parse a clinical table (see the module docstring for the columns and values).

    Raises:
        ValueError: no case-id column, no label column, a duplicate case id, or no rows.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    by_key = {_key(name): name for name in header}
    columns: dict[str, str] = {}  # the first alias listed wins
    for target, aliases in COLUMNS.items():
        for alias in aliases:
            if _key(alias) in by_key:
                columns[target] = by_key[_key(alias)]
                break
    if "case_id" not in columns:
        raise ValueError(f"no case id column among {header}; expected one of {COLUMNS['case_id']}")
    if not set(columns) & {"idh", "mgmt", "grade", "type"}:
        raise ValueError(
            f"no label column among {header}; expected IDH, MGMT, grade or histology columns "
            f"({', '.join(COLUMNS['idh'] + COLUMNS['mgmt'] + COLUMNS['grade'] + COLUMNS['type'])})"
        )
    records: list[dict[str, Any]] = []
    unknown: dict[str, int] = {t: 0 for t in ("idh", "mgmt", "grade", "type") if t in columns}
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        case_id = (row.get(columns["case_id"]) or "").strip()
        if not case_id:
            raise ValueError(f"line {line}: empty case id in column {columns['case_id']!r}")
        if case_id in seen:
            raise ValueError(f"line {line}: case id {case_id!r} appears twice")
        seen.add(case_id)

        def cell(target: str, row: dict[str, Any] = row) -> str:
            return str(row.get(columns[target]) or "") if target in columns else ""

        tumour_type = parse_tumour_type(cell("type")) if "type" in columns else None
        grade = parse_grade(cell("grade")) if "grade" in columns else None
        idh = parse_idh(cell("idh")) if "idh" in columns else None
        mgmt = parse_mgmt(cell("mgmt")) if "mgmt" in columns else None
        for target, value in (
            ("type", tumour_type),
            ("grade", grade),
            ("idh", idh),
            ("mgmt", mgmt),
        ):
            if target in unknown and value is None:
                unknown[target] += 1
        # IDH and MGMT are glioma tasks: a case recorded as another type has neither
        if tumour_type is not None and tumour_type != "glioma":
            idh = mgmt = None
        records.append(
            {
                "case_id": case_id,
                "labels": {
                    "tumour_type": tumour_type,
                    "who_grade": grade,
                    "high_grade": None if grade is None else grade >= 3,
                    "idh_mutant": idh,
                    "mgmt_methylated": mgmt,
                    "age_years": parse_age(cell("age")) if "age" in columns else None,
                },
            }
        )
    if not records:
        raise ValueError("the labels table has no rows")
    return ClinicalLabels(records=records, columns=columns, unknown=unknown)
