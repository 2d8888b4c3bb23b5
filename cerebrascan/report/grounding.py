"""Grounding checker: every number, unit, side, location, category, change and feature in a
narrative must agree with the findings the writer was given, with its polarity.

The rule (also in ``docs/report.md``):

* **Claims** are extracted from the narrative and from the facts (the pre-formatted findings of
  :mod:`cerebrascan.report.facts`) with the same extractor. The facts' claims are the allowed
  set; every narrative claim must agree with it.
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
* **Terms** with a polarity: *sides* (left, right, bilateral, midline, ...), *locations* (a
  fixed vocabulary of structures and lobes, canonicalised: ``ventricular`` -> ventricles),
  *categories* (tumour types, grades, benign/malignant, molecular states, risk levels),
  *changes* (progression, stable, response, increased, decreased, new lesion) and *features*
  (enhancement, non-enhancing core / necrosis, edema, tumour / lesion).
  An **asserted** term must be asserted by the findings; a **negated** term must not be (the
  findings negate it or do not mention it); an **ambiguous** one is refused. The findings'
  polarity: features from the sub-region volumes (ET > 0 asserts enhancement, ET = 0 negates
  it; NETC, SNFH, WT likewise), "new lesion" from the new-lesion count, the rest from the
  facts' text read with the same extractor. A feature quantified by a volume in its segment
  ("enhancing tumour 0.0 mL") is a measurement: its number is checked, not its presence.

**Negation scope.** A *sentence* ends at ``. ! ? ; :``, a bracket, a line break or a contrast
word (but, however, although, though, whereas, while, yet, except, apart/aside from); it is cut
into *segments* at commas and "and" ("or" and "nor" keep a list together). A forward cue (no,
not, without, absence of, negative for, free of, lack of, neither, nor, never, none, no longer,
-n't; not "no-go") negates the terms after it in its segment; a backward cue (``[is] not seen /
identified / present / ...``, absent, resolved, ruled out, excluded) negates the terms before
it in its segment (absent, resolved, ruled out and excluded also negate forwards). A term after
the segment of a forward cue in the same sentence is *ambiguous* ("no new lesion, benign": the
negation may or may not run on), and refused. "Cannot be excluded" hedges and negates nothing.
Numbers and dates are checked whatever their polarity. The checker errs towards refusing; a
refused narrative is replaced by the template's.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from schemas.report import GroundingMismatch

ClaimKind = Literal["number", "side", "location", "category", "change", "feature", "date"]
PolarKind = Literal["side", "location", "category", "change", "feature"]
RefusalReason = Literal[
    "not_in_findings", "negates_a_finding", "ambiguous_negation", "other_sub_region"
]

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
    "left-sided": "left",
    "left sided": "left",
    "left-hemispheric": "left",
    "right": "right",
    "right-sided": "right",
    "right sided": "right",
    "right-hemispheric": "right",
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
    "radionecrosis": "radionecrosis",
    "high risk": "high risk",
    "high-risk": "high risk",
    "moderate risk": "moderate risk",
    "moderate-risk": "moderate risk",
    "low risk": "low risk",
    "low-risk": "low risk",
    "passed": "passed",
    "failed": "failed",
}

CHANGES = {
    "progression": "progression",
    "progressive": "progression",
    "progressing": "progression",
    "progressed": "progression",
    "stable": "stable",
    "unchanged": "stable",
    "stable disease": "stable",
    "partial response": "partial response",
    "complete response": "complete response",
    "response": "response",
    "regression": "regression",
    "regressing": "regression",
    "pseudoprogression": "pseudoprogression",
    "increased": "increased",
    "increase": "increased",
    "increasing": "increased",
    "enlarged": "increased",
    "enlarging": "increased",
    "growth": "increased",
    "grown": "increased",
    "decreased": "decreased",
    "decrease": "decreased",
    "decreasing": "decreased",
    "reduced": "decreased",
    "shrunk": "decreased",
    "new lesion": "new lesion",
    "new lesions": "new lesion",
    "new tumour": "new lesion",
    "new tumor": "new lesion",
    "new focus": "new lesion",
    "new foci": "new lesion",
}
"""Change since prior studies: categories of the longitudinal analyzer and their wording."""
FEATURES = {
    "enhancing tumour": "enhancement",
    "enhancing tumor": "enhancement",
    "enhancing": "enhancement",
    "enhancement": "enhancement",
    "enhances": "enhancement",
    "enhance": "enhancement",
    "contrast-enhancing": "enhancement",
    "non-enhancing": "non-enhancing core",
    "non enhancing": "non-enhancing core",
    "nonenhancing": "non-enhancing core",
    "necrosis": "non-enhancing core",
    "necrotic": "non-enhancing core",
    "edema": "edema",
    "oedema": "edema",
    "flair hyperintensity": "edema",
    "hyperintensity": "edema",
    "hyperintense": "edema",
    "tumour": "tumour",
    "tumor": "tumour",
    "tumours": "tumour",
    "tumors": "tumour",
    "lesion": "tumour",
    "lesions": "tumour",
    "neoplasm": "tumour",
}
"""Presence of a sub-region: checked against its volume (> 0 present, 0 absent), not the text."""
FEATURE_REGIONS = {
    "enhancement": "ET",
    "non-enhancing core": "NETC",
    "edema": "SNFH",
    "tumour": "WT",
}


def _vocabulary_re(vocabulary: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so "unmethylated" is not read as "methylated".
    alternatives = sorted(vocabulary, key=len, reverse=True)
    return re.compile(
        r"(?<![\w-])(" + "|".join(re.escape(term) for term in alternatives) + r")(?![\w-])",
        re.IGNORECASE,
    )


POLAR_TERMS: dict[str, tuple[PolarKind, str]] = {}
for _kind, _vocabulary in (
    ("side", SIDES),
    ("location", LOCATIONS),
    ("category", CATEGORIES),
    ("change", CHANGES),
    ("feature", FEATURES),
):
    for _term, _canonical in _vocabulary.items():
        if _term in POLAR_TERMS:  # pragma: no cover - a vocabulary edit error
            raise ValueError(f"term {_term!r} is in two vocabularies")
        POLAR_TERMS[_term] = (_kind, _canonical)  # type: ignore[assignment]
# One pattern for every kind: the longest term wins ("new lesions" is a change, not a lesion).
POLAR_RE = _vocabulary_re(POLAR_TERMS)
LOCATION_RE = _vocabulary_re(LOCATIONS)
SPELLED_RE = _vocabulary_re(SPELLED_NUMBERS)

# ---- polarity --------------------------------------------------------------------------------
# A *sentence* ends at . ! ? ; : a bracket or a line break, or before a contrast word; polarity
# never crosses it. A sentence is cut into *segments* at commas and "and"; "or" / "nor" keep a
# list inside one segment ("no enhancement or necrosis").
SENTENCE_BREAK_RE = re.compile(
    r"[!?;:()\[\]\n]|\.(?!\d)"
    r"|\b(?:but|however|although|though|whereas|while|yet|except|apart from|aside from)\b",
    re.IGNORECASE,
)
SEGMENT_BREAK_RE = re.compile(r",|\band\b", re.IGNORECASE)
FORWARD_CUE_RE = re.compile(
    r"\b(?:no(?![\s-]+go\b)|not|without|absence\s+of|negative\s+for|free\s+of|lack\s+of|"
    r"lacks|lacking|neither|nor|never|none|no\s+longer|\w+n't|cannot)\b",
    re.IGNORECASE,
)
"""Negates the claims after it, to the end of its segment."""
BACKWARD_CUE_RE = re.compile(
    r"\b(?:(?:is|are|was|were|has|have|had|been)\s+)?not\s+(?:seen|identified|present|evident|"
    r"demonstrated|detected|visible|noted|found|shown|observed)\b"
    r"|\b(?:absent|resolved|resolving|ruled\s+out|excluded|disappeared)\b",
    re.IGNORECASE,
)
"""Negates the claims before it in its segment ("enhancement has resolved"); "absent",
"resolved", "ruled out" also negate forwards ("resolved enhancement")."""
BOTH_WAYS_CUE_RE = re.compile(
    r"\b(?:absent|resolved|resolving|ruled\s+out|excluded|disappeared)\b", re.IGNORECASE
)
HEDGE_RE = re.compile(
    r"\b(?:cannot|can't|could\s+not|can\s+not|not)\s+be\s+(?:excluded|ruled\s+out)\b",
    re.IGNORECASE,
)
Polarity = Literal["asserted", "negated", "ambiguous"]


@dataclass(frozen=True)
class _Segment:
    start: int
    end: int
    sentence: int
    forward_cues: tuple[int, ...]
    """Start offsets of cues that negate forwards."""
    backward_cues: tuple[int, ...]
    """End offsets of cues that negate backwards."""


def _spans(text: str, breaks: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    spans, cursor = [], start
    for match in breaks.finditer(text, start, end):
        spans.append((cursor, match.start()))
        cursor = match.end()
    spans.append((cursor, end))
    return spans


def _segments(text: str) -> list[_Segment]:
    segments = []
    for number, (s_start, s_end) in enumerate(_spans(text, SENTENCE_BREAK_RE, 0, len(text))):
        for start, end in _spans(text, SEGMENT_BREAK_RE, s_start, s_end):
            # "malignancy cannot be excluded" hedges; it negates nothing
            piece = HEDGE_RE.sub(lambda m: " " * len(m.group(0)), text[start:end])
            forward = [start + m.start() for m in FORWARD_CUE_RE.finditer(piece)]
            forward += [start + m.start() for m in BOTH_WAYS_CUE_RE.finditer(piece)]
            backward = [start + m.end() for m in BACKWARD_CUE_RE.finditer(piece)]
            segments.append(_Segment(start, end, number, tuple(forward), tuple(backward)))
    return segments


def _segment_index(segments: list[_Segment], position: int) -> int:
    """Index of the last segment that starts at or before ``position`` (terms never start
    inside a break, so that is the one holding it)."""
    return max(0, bisect.bisect_right([seg.start for seg in segments], position) - 1)


def claim_polarity(segments: list[_Segment], start: int, end: int) -> Polarity:
    """Polarity of the term at ``text[start:end]`` by the rule of ``docs/report.md``.

    * *negated*: a forward cue precedes it in its segment, or a backward cue follows it there;
    * *ambiguous*: otherwise, when an earlier segment of its sentence holds a forward cue (the
      negation may or may not run on past the comma or "and": "no new lesion, benign");
    * *asserted*: otherwise.
    """
    index = _segment_index(segments, start)
    segment = segments[index]
    if any(cue < start for cue in segment.forward_cues) or any(
        cue > end for cue in segment.backward_cues
    ):
        return "negated"
    for earlier in reversed(segments[:index]):
        if earlier.sentence != segment.sentence:
            break
        if earlier.forward_cues:
            return "ambiguous"
    return "asserted"


@dataclass(frozen=True)
class Claim:
    """One checkable statement found in a text."""

    kind: ClaimKind
    text: str
    value: float | str
    unit: str | None = None
    position: int | None = None
    """Offset in the text (spelled-out numbers: None)."""
    polarity: Polarity = "asserted"
    """For sides, locations, categories, changes and features; numbers and dates: asserted."""
    measurement: bool = False
    """A feature quantified in its segment by a volume ("enhancing tumour 0.0 mL")."""


@dataclass(frozen=True)
class RefusedClaim:
    """A refused claim with its text: for tests and debugging only, never stored or logged
    (the text is the endpoint's)."""

    claim: Claim
    section: str
    reason: RefusalReason


@dataclass(frozen=True)
class GroundingResult:
    """Outcome of checking narrative sections against the facts."""

    refused: list[RefusedClaim]
    claims_checked: int

    @property
    def grounded(self) -> bool:
        """No claim contradicts or goes beyond the findings."""
        return not self.refused

    @property
    def mismatches(self) -> list[GroundingMismatch]:
        """The refused claims without their text (what a report may record)."""
        return [
            GroundingMismatch(
                kind=r.claim.kind,
                section=r.section,
                reason=r.reason,
                polarity=r.claim.polarity,
                start=r.claim.position,
                length=len(r.claim.text),
            )
            for r in self.refused
        ]


ML_NUMBER_RE = re.compile(r"\d\s?(?:ml|cc|cm3|cm³|millilit(?:re|er)s)\b", re.IGNORECASE)


def extract_claims(text: str) -> list[Claim]:
    """Numbers (with units), dates, sides, locations, categories, changes and features in
    ``text``, each term with its polarity."""
    claims: list[Claim] = []
    without_dates = DATE_RE.sub(lambda m: " " * len(m.group(0)), text)  # offsets kept
    claims.extend(
        Claim("date", m.group(0), m.group(0), position=m.start()) for m in DATE_RE.finditer(text)
    )
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
    segments = _segments(text)
    for match in POLAR_RE.finditer(text):
        kind, canonical = POLAR_TERMS[match[1].lower()]
        segment = segments[_segment_index(segments, match.start())]
        claims.append(
            Claim(
                kind,
                match.group(0),
                canonical,
                position=match.start(),
                polarity=claim_polarity(segments, match.start(), match.end()),
                measurement=kind == "feature"
                and bool(ML_NUMBER_RE.search(text, segment.start, segment.end)),
            )
        )
    return claims


def facts_text(facts: Mapping[str, Any]) -> str:
    """The values of a facts dictionary as one text, one line per key and value (keys are ours,
    but a key can be a finding itself: a structure's name)."""
    parts: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                parts.append(str(key).replace("_", " "))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif node is not None:
            # identifiers such as partial_response read as the words they stand for
            parts.append(str(node).replace("_", " "))

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


def _region_volumes(facts: Mapping[str, Any]) -> dict[str, float]:
    volumes = facts.get("sub_region_volumes")
    if not isinstance(volumes, Mapping):
        return {}
    bound = {}
    for code, text in volumes.items():
        numbers = [c.value for c in extract_claims(str(text)) if c.kind == "number"]
        if numbers and isinstance(numbers[0], float):
            bound[str(code)] = numbers[0]
    return bound


def _new_lesion_count(facts: Mapping[str, Any]) -> int | None:
    change = facts.get("change_since_prior")
    if not isinstance(change, Mapping):
        return None
    value = change.get("new lesions")
    try:
        return int(str(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class FactTerms:
    """Which terms the findings assert, and which they mention at all (either polarity)."""

    asserted: frozenset[tuple[str, str]]
    mentioned: frozenset[tuple[str, str]]


def fact_terms(facts: Mapping[str, Any]) -> FactTerms:
    """The terms of the findings with their polarity.

    Sides, locations, categories and changes are read from the facts' text with the
    narrative's extractor (so "no tumour" or "not stated" there is negated). Features come from
    the sub-region volumes (ET > 0: enhancement present, = 0: absent; NETC: non-enhancing core;
    SNFH: edema; WT: tumour) and "new lesion" from the change section's new-lesion count, not
    from the text (which names them as keys whatever their value).
    """
    asserted: set[tuple[str, str]] = set()
    mentioned: set[tuple[str, str]] = set()
    count = _new_lesion_count(facts)
    for claim in extract_claims(facts_text(facts)):
        if claim.kind in ("number", "date", "feature"):
            continue
        if claim.kind == "change" and claim.value == "new lesion" and count is not None:
            continue
        key = (claim.kind, str(claim.value))
        mentioned.add(key)
        if claim.polarity == "asserted":
            asserted.add(key)
    volumes = _region_volumes(facts)
    for feature, region in FEATURE_REGIONS.items():
        if region in volumes:
            mentioned.add(("feature", feature))
            if volumes[region] > 0:
                asserted.add(("feature", feature))
    if count is not None:
        mentioned.add(("change", "new lesion"))
        if count > 0:
            asserted.add(("change", "new lesion"))
    return FactTerms(frozenset(asserted), frozenset(mentioned))


def check_sections(
    sections: Mapping[str, str], facts: Mapping[str, Any], *, polarity: bool = True
) -> GroundingResult:
    """Compare every claim of each narrative section with the claims of the facts.

    Args:
        sections: narrative sections by name (``findings``, ``impression``).
        facts: what the writer was given (:func:`cerebrascan.report.facts.report_facts`).
        polarity: False ignores negation (a term is accepted when the findings mention it at
            all), as the checker did before issue 24; only the tests use it, to show that each
            inversion needs the polarity check.

    Returns:
        The refused claims (none when grounded) and how many claims were compared.
    """
    allowed = extract_claims(facts_text(facts))
    allowed_dates = {c.value for c in allowed if c.kind == "date"}
    allowed_numbers = [c for c in allowed if c.kind == "number"]
    terms = fact_terms(facts)
    refused: list[RefusedClaim] = []
    checked = 0
    bindings = _region_volumes(facts)
    for section, text in sections.items():
        for claim in extract_claims(text):
            checked += 1
            reason = _refusal(
                claim, text, terms, allowed_numbers, allowed_dates, bindings, polarity
            )
            if reason is not None:
                refused.append(RefusedClaim(claim, section, reason))
    return GroundingResult(refused=refused, claims_checked=checked)


def _refusal(
    claim: Claim,
    text: str,
    terms: FactTerms,
    allowed_numbers: list[Claim],
    allowed_dates: set[float | str],
    bindings: Mapping[str, float],
    polarity: bool,
) -> RefusalReason | None:
    """Why ``claim`` is refused, or None."""
    if claim.kind == "number":
        if not any(
            _same_number(claim.value, a.value) and (claim.unit is None or claim.unit == a.unit)
            for a in allowed_numbers
        ):
            return "not_in_findings"
        if claim.unit == "mL" and claim.position is not None:
            region = _bound_sub_region(text, claim.position)
            if region is not None and region in bindings:
                if not _same_number(claim.value, bindings[region]):
                    return "other_sub_region"
        return None
    if claim.kind == "date":
        return None if claim.value in allowed_dates else "not_in_findings"
    key = (claim.kind, str(claim.value))
    if not polarity:
        return None if key in terms.mentioned else "not_in_findings"
    if claim.polarity == "ambiguous" and not claim.measurement:
        return "ambiguous_negation"
    if claim.polarity == "negated":
        return "negates_a_finding" if key in terms.asserted else None
    if claim.measurement:
        return None  # "enhancing tumour 0.0 mL": the volume is checked as a number
    return None if key in terms.asserted else "not_in_findings"


def _same_number(claim: float | str, allowed: float | str) -> bool:
    return isinstance(claim, float) and isinstance(allowed, float) and abs(claim - allowed) < 1e-9


def facts_json(facts: Mapping[str, Any]) -> str:
    """Facts as the JSON the prompt shows (stable key order)."""
    return json.dumps(facts, ensure_ascii=False, separators=(",", ":"))
