"""Grounding checker: every number, unit, side, location and category in a narrative must occur
in the findings the writer was given.

The rule (also in ``docs/report.md``):

* **Claims** are extracted from the narrative and from the facts (the pre-formatted findings of
  :mod:`cerebrascan.report.facts`) with the same extractor. The facts' claims are the allowed
  set; every narrative claim must be in it.
* **Numbers**: decimal numbers (``39.9``, ``-98.0``, ``1,080``) and the spelled-out numbers
  two to twenty. A number followed by a unit (mL, cc, cm³, mm, mm², cm, %) must equal an allowed
  number that carries the same unit (cc and cm³ count as mL; no unit conversion). A number without
  a unit must equal any allowed number. Equal means equal after parsing at the precision the
  facts used, so ``39.90`` matches ``39.9`` but ``40`` does not. Digits inside words (``T1``,
  ``3D``, ``SRI24``) are not numbers.
  A volume in mL whose clause (the text since the last comma, colon, semicolon or bracket)
  names a sub-region (enhancing tumour, non-enhancing core, edema / FLAIR hyperintensity, tumour
  core, whole tumour or bare "tumour") must be that sub-region's volume: "edema 20.2 mL" is
  refused when 20.2 mL is the tumour core's.
* **Dates** (``YYYY-MM-DD``) must occur in the facts.
* **Sides**: left, right, bilateral, midline, contralateral, ipsilateral must occur in the facts.
* **Locations**: a fixed vocabulary of brain structures and lobes (canonicalised: ``ventricular``
  -> ventricles, ``frontal lobe`` -> frontal); each mentioned must occur in the facts.
* **Categories**: tumour types, grades, benign/malignant, molecular markers' states, change
  categories and risk levels from a fixed vocabulary; each mentioned must occur in the facts.

The checker does not parse negation: "not benign" mentions *benign*, and is refused when the
findings never say benign. It errs towards refusing, after which the template is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from schemas.report import GroundingMismatch

ClaimKind = Literal["number", "side", "location", "category", "date"]

UNIT_ALIASES = {
    "ml": "mL",
    "millilitres": "mL",
    "milliliters": "mL",
    "cc": "mL",
    "cm3": "mL",
    "cm³": "mL",
    "mm": "mm",
    "millimetres": "mm",
    "millimeters": "mm",
    "mm2": "mm2",
    "mm²": "mm2",
    "cm": "cm",
    "%": "%",
    "percent": "%",
}
_UNIT_PATTERN = "|".join(
    re.escape(u) for u in sorted(UNIT_ALIASES, key=len, reverse=True) if u != "%"
)
NUMBER_RE = re.compile(
    r"(?P<sign>(?:^|(?<=[\s(\[,:=]))[-−])?"
    r"(?<![\w.])(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:\s?(?P<unit>%|(?:" + _UNIT_PATTERN + r")(?![\w])))?"
    r"(?![\w.]*[A-Za-z_])",
    re.IGNORECASE,
)
DATE_RE = re.compile(r"(?<!\d)\d{4}-\d{2}-\d{2}(?!\d)")
SPELLED_NUMBERS = {
    "zero": 0,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
SIDES = {
    "left": "left",
    "right": "right",
    "bilateral": "bilateral",
    "bilaterally": "bilateral",
    "midline": "midline",
    "contralateral": "contralateral",
    "ipsilateral": "ipsilateral",
}
LOCATIONS = {
    "frontal lobe": "frontal",
    "frontal": "frontal",
    "temporal lobe": "temporal",
    "temporal": "temporal",
    "parietal lobe": "parietal",
    "parietal": "parietal",
    "occipital lobe": "occipital",
    "occipital": "occipital",
    "insula": "insula",
    "insular": "insula",
    "thalamus": "thalamus",
    "thalamic": "thalamus",
    "brainstem": "brainstem",
    "brain stem": "brainstem",
    "pons": "brainstem",
    "pontine": "brainstem",
    "medulla": "brainstem",
    "midbrain": "brainstem",
    "ventricles": "ventricles",
    "ventricle": "ventricles",
    "ventricular": "ventricles",
    "internal capsule": "internal capsule",
    "corpus callosum": "corpus callosum",
    "callosal": "corpus callosum",
    "splenium": "corpus callosum",
    "genu": "corpus callosum",
    "cerebellum": "cerebellum",
    "cerebellar": "cerebellum",
    "basal ganglia": "basal ganglia",
    "caudate": "basal ganglia",
    "putamen": "basal ganglia",
    "globus pallidus": "basal ganglia",
    "hippocampus": "hippocampus",
    "hippocampal": "hippocampus",
    "amygdala": "amygdala",
    "hypothalamus": "hypothalamus",
    "optic chiasm": "optic chiasm",
    "optic nerve": "optic nerve",
    "pituitary": "pituitary",
    "cingulate": "cingulate",
    "motor cortex": "motor cortex",
    "precentral gyrus": "motor cortex",
    "sensory cortex": "sensory cortex",
    "postcentral gyrus": "sensory cortex",
    "broca": "broca area",
    "wernicke": "wernicke area",
}
CATEGORIES = {
    "glioblastoma": "glioblastoma",
    "gbm": "glioblastoma",
    "astrocytoma": "astrocytoma",
    "oligodendroglioma": "oligodendroglioma",
    "glioma": "glioma",
    "ependymoma": "ependymoma",
    "medulloblastoma": "medulloblastoma",
    "meningioma": "meningioma",
    "lymphoma": "lymphoma",
    "metastasis": "metastasis",
    "metastases": "metastasis",
    "metastatic": "metastasis",
    "abscess": "abscess",
    "benign": "benign",
    "malignant": "malignant",
    "malignancy": "malignant",
    "low-grade": "low-grade",
    "low grade": "low-grade",
    "high-grade": "high-grade",
    "high grade": "high-grade",
    "idh-mutant": "mutant",
    "idh mutant": "mutant",
    "mutant": "mutant",
    "mutated": "mutant",
    "mutation": "mutant",
    "wildtype": "wildtype",
    "wild-type": "wildtype",
    "wild type": "wildtype",
    "methylated": "methylated",
    "unmethylated": "unmethylated",
    "non-methylated": "unmethylated",
    "codeleted": "codeleted",
    "co-deleted": "codeleted",
    "codeletion": "codeleted",
    "non-codeleted": "non-codeleted",
    "progression": "progression",
    "progressive": "progression",
    "progressing": "progression",
    "stable": "stable",
    "unchanged": "stable",
    "stable disease": "stable",
    "partial response": "partial response",
    "complete response": "complete response",
    "response": "response",
    "regression": "regression",
    "regressing": "regression",
    "pseudoprogression": "pseudoprogression",
    "radionecrosis": "radionecrosis",
    "increased": "increased",
    "increase": "increased",
    "enlarged": "increased",
    "decreased": "decreased",
    "decrease": "decreased",
    "reduced": "decreased",
    "high risk": "high risk",
    "high-risk": "high risk",
    "moderate risk": "moderate risk",
    "moderate-risk": "moderate risk",
    "low risk": "low risk",
    "low-risk": "low risk",
    "passed": "passed",
    "failed": "failed",
}


def _vocabulary_re(vocabulary: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so "unmethylated" is not read as "methylated".
    alternatives = sorted(vocabulary, key=len, reverse=True)
    return re.compile(
        r"(?<![\w-])(" + "|".join(re.escape(term) for term in alternatives) + r")(?![\w-])",
        re.IGNORECASE,
    )


SIDE_RE = _vocabulary_re(SIDES)
LOCATION_RE = _vocabulary_re(LOCATIONS)
CATEGORY_RE = _vocabulary_re(CATEGORIES)
SPELLED_RE = _vocabulary_re(SPELLED_NUMBERS)


@dataclass(frozen=True)
class Claim:
    """One checkable statement found in a text."""

    kind: ClaimKind
    text: str
    value: float | str
    unit: str | None = None
    position: int | None = None
    """Offset of a number in the text (dates and spelled-out numbers: None)."""


@dataclass(frozen=True)
class GroundingResult:
    """Outcome of checking narrative sections against the facts."""

    mismatches: list[GroundingMismatch]
    claims_checked: int

    @property
    def grounded(self) -> bool:
        """No claim contradicts or goes beyond the findings."""
        return not self.mismatches


def extract_claims(text: str) -> list[Claim]:
    """Numbers (with units), dates, sides, locations and categories in ``text``."""
    claims: list[Claim] = []
    without_dates = DATE_RE.sub(lambda m: " " * len(m.group(0)), text)  # offsets kept
    claims.extend(Claim("date", m.group(0), m.group(0)) for m in DATE_RE.finditer(text))
    for match in NUMBER_RE.finditer(without_dates):
        digits = match.group("number").replace(",", "")
        value = float(digits)
        if match.group("sign"):
            value = -value
        unit = match.group("unit")
        canonical = UNIT_ALIASES.get(unit.lower()) if unit else None
        claims.append(Claim("number", match.group(0).strip(), value, canonical, match.start()))
    for match in SPELLED_RE.finditer(text):
        claims.append(Claim("number", match.group(0), float(SPELLED_NUMBERS[match[1].lower()])))
    for pattern, vocabulary, kind in (
        (SIDE_RE, SIDES, "side"),
        (LOCATION_RE, LOCATIONS, "location"),
        (CATEGORY_RE, CATEGORIES, "category"),
    ):
        for match in pattern.finditer(text):
            claims.append(Claim(kind, match.group(0), vocabulary[match[1].lower()]))  # type: ignore[arg-type]
    return claims


def facts_text(facts: Mapping[str, Any]) -> str:
    """The values of a facts dictionary as one text (keys are ours, not findings)."""
    parts: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                # A key of a facts mapping can be a finding itself (a structure's name).
                parts.append(str(key).replace("_", " "))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif node is not None:
            parts.append(str(node))

    walk(facts)
    return "\n".join(parts)


SUB_REGION_TERMS = {
    "non-enhancing tumour core": "NETC",
    "non-enhancing tumor core": "NETC",
    "non-enhancing core": "NETC",
    "non-enhancing": "NETC",
    "necrotic core": "NETC",
    "necrosis": "NETC",
    "netc": "NETC",
    "enhancing tumour": "ET",
    "enhancing tumor": "ET",
    "enhancing": "ET",
    "enhancement": "ET",
    "et": "ET",
    "flair hyperintensity": "SNFH",
    "hyperintensity": "SNFH",
    "oedema": "SNFH",
    "edema": "SNFH",
    "snfh": "SNFH",
    "tumour core": "TC",
    "tumor core": "TC",
    "tc": "TC",
    "whole tumour": "WT",
    "whole-tumour": "WT",
    "whole tumor": "WT",
    "whole-tumor": "WT",
    "tumour": "WT",
    "tumor": "WT",
    "wt": "WT",
}
SUB_REGION_RE = _vocabulary_re(SUB_REGION_TERMS)
CLAUSE_BREAK_RE = re.compile(r"[,;:()\[\]]|\.(?!\d)")


def _bound_sub_region(text: str, position: int) -> str | None:
    """The sub-region named last in the clause that ends at ``position``, if any."""
    clause = CLAUSE_BREAK_RE.split(text[:position])[-1]
    matches = list(SUB_REGION_RE.finditer(clause))
    if not matches:
        return None
    structures = list(LOCATION_RE.finditer(clause))
    if structures and structures[-1].start() > matches[-1].start():
        return None  # "the tumour overlaps the thalamus by 8.2 mL": the structure's volume
    return SUB_REGION_TERMS[matches[-1][1].lower()]


def _volume_bindings(facts: Mapping[str, Any]) -> dict[str, float]:
    volumes = facts.get("sub_region_volumes")
    if not isinstance(volumes, Mapping):
        return {}
    bound = {}
    for code, text in volumes.items():
        numbers = [c.value for c in extract_claims(str(text)) if c.kind == "number"]
        if numbers and isinstance(numbers[0], float):
            bound[str(code)] = numbers[0]
    return bound


def _allowed_key(claim: Claim) -> tuple[str, object]:
    return claim.kind, claim.value


def check_sections(sections: Mapping[str, str], facts: Mapping[str, Any]) -> GroundingResult:
    """Compare every claim of each narrative section with the claims of the facts.

    Args:
        sections: narrative sections by name (``findings``, ``impression``).
        facts: what the writer was given (:func:`cerebrascan.report.facts.report_facts`).

    Returns:
        The mismatches (empty when grounded) and how many claims were compared.
    """
    allowed = extract_claims(facts_text(facts))
    allowed_terms = {_allowed_key(c) for c in allowed if c.kind != "number"}
    allowed_numbers = [c for c in allowed if c.kind == "number"]
    mismatches: list[GroundingMismatch] = []
    checked = 0
    bindings = _volume_bindings(facts)
    for section, text in sections.items():
        for claim in extract_claims(text):
            checked += 1
            if claim.kind == "number":
                ok = any(
                    _same_number(claim.value, a.value)
                    and (claim.unit is None or claim.unit == a.unit)
                    for a in allowed_numbers
                )
                if ok and claim.unit == "mL" and claim.position is not None:
                    region = _bound_sub_region(text, claim.position)
                    if region in bindings:
                        ok = _same_number(claim.value, bindings[region])
            else:
                ok = _allowed_key(claim) in allowed_terms
            if not ok:
                mismatches.append(
                    GroundingMismatch(kind=claim.kind, claim=claim.text, section=section)
                )
    return GroundingResult(mismatches=mismatches, claims_checked=checked)


def _same_number(claim: float | str, allowed: float | str) -> bool:
    return isinstance(claim, float) and isinstance(allowed, float) and abs(claim - allowed) < 1e-9


def facts_json(facts: Mapping[str, Any]) -> str:
    """Facts as the JSON the prompt shows (stable key order)."""
    return json.dumps(facts, ensure_ascii=False, separators=(",", ":"))
