"""Polarity in the grounding checker (issue 24): a negated claim must match a negated or absent
finding, an asserted claim an asserted one.

Every inversion below is refused with the polarity check and *accepted* by the same checker with
it disabled (``check_sections(..., polarity=False)``, the rule before issue 24): the second
assertion of :func:`test_an_inversion_is_refused_only_with_polarity` shows that each test needs
the check. The facts are the writer's facts dictionary (:func:`report_facts`) of report sections
built here, so no study has to be analysed.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cerebrascan.report.facts import report_facts
from cerebrascan.report.grounding import check_sections, extract_claims
from cerebrascan.report.template_writer import write_narrative
from schemas.report import (
    BiopsyTargets,
    ChangeItem,
    ChangeSincePrior,
    ModelOpinion,
    Narrative,
    NoGoStructures,
    OverlayImage,
    Prediction,
    QualitySection,
    SectionStatus,
    StructureAtRisk,
    StructureInvolvement,
    StudyReport,
    SubRegionFinding,
    Technique,
    TumourFindings,
    WriterRecord,
)

OK = SectionStatus(available=True)


def _report(
    *,
    et: float = 5.0,
    hemisphere: str = "left",
    change: str | None = "progression",
    new_lesions: int | None = 2,
    classification: str | None = "glioblastoma",
) -> StudyReport:
    """A report whose findings are exactly the arguments (NETC 3.0, SNFH 10.0 mL)."""
    netc, snfh = 3.0, 10.0
    volumes = {"NETC": netc, "SNFH": snfh, "ET": et, "TC": netc + et, "WT": netc + et + snfh}
    items = [ChangeItem(name="WT", value="18.0 mL (prior 12.0 mL, change +6.0 mL, +50%)")]
    if new_lesions is not None:
        items.append(ChangeItem(name="new lesions", value=str(new_lesions)))
    return StudyReport(
        notice="Research use only.",
        generated_at=datetime.now(UTC),
        technique=Technique(
            study_id="0" * 32,
            analysed_at=datetime.now(UTC),
            modalities=["t1n", "t1c", "t2w", "t2f"],
            shape=(64, 64, 64),
            spacing_mm=(1.0, 1.0, 1.0),
            orientation="RAS",
            model_name="m",
            model_version="1",
            model_alias="prod",
            runner="onnx",
            trained_on="phantoms",
            analyzer_versions={},
        ),
        findings=TumourFindings(
            sub_regions=[
                SubRegionFinding(code=code, name=code, volume_ml=value)
                for code, value in volumes.items()
            ],
            hemisphere=hemisphere,  # type: ignore[arg-type]
            lesion_count=1,
            involved_structures=[StructureInvolvement(name="frontal lobe", overlap_ml=2.0)],
            location_status=OK,
        ),
        classification=ModelOpinion(
            status=OK if classification else SectionStatus(available=False, reason="not run"),
            predictions=(
                [Prediction(name="tumour type", value=classification, confidence=0.8)]
                if classification
                else []
            ),
        ),
        radiogenomics=ModelOpinion(status=SectionStatus(available=False, reason="not run")),
        biopsy_targets=BiopsyTargets(status=SectionStatus(available=False, reason="not run")),
        structures_at_risk=NoGoStructures(
            status=OK,
            highest_risk="high",
            structures=[
                StructureAtRisk(name="motor cortex", risk="high", min_distance_mm=4.0, overlap_ml=0)
            ],
        ),
        change=ChangeSincePrior(
            status=OK if change else SectionStatus(available=False, reason="no prior study"),
            category=change,
            items=items if change else [],
        ),
        quality=QualitySection(status=OK, passed=True),
        overlay=OverlayImage(shown=False, reason="test"),
        narrative=Narrative(findings="", impression=""),
        writer=WriterRecord(requested="template", used="template"),
    )


# (claim, findings, kind of the refused claim): each says the opposite of the findings.
INVERSIONS = [
    ("No new lesion is seen.", {"new_lesions": 2}, "change"),
    ("There are no new lesions.", {"new_lesions": 1}, "change"),
    ("The tumour is not enhancing.", {"et": 5.0}, "feature"),
    ("Without enhancement.", {"et": 5.0}, "feature"),
    ("Enhancement is not seen.", {"et": 5.0}, "feature"),
    ("Enhancement has resolved.", {"et": 5.0}, "feature"),
    ("There is no tumour.", {}, "feature"),
    ("Absence of edema.", {}, "feature"),
    ("No progression since the prior study.", {"change": "progression"}, "change"),
    ("The disease is no longer progressing.", {"change": "progression"}, "change"),
    ("The tumour is not stable.", {"change": "stable", "new_lesions": 0}, "change"),
    ("The tumour is not left-sided.", {"hemisphere": "left"}, "side"),
    ("Not in the left hemisphere.", {"hemisphere": "left"}, "side"),
    ("The tumour does not involve the frontal lobe.", {}, "location"),
    ("Negative for glioblastoma.", {"classification": "glioblastoma"}, "category"),
    ("The tumour isn't a glioblastoma.", {"classification": "glioblastoma"}, "category"),
]


@pytest.mark.parametrize(("text", "findings", "kind"), INVERSIONS)
def test_an_inversion_is_refused_only_with_polarity(
    text: str, findings: dict[str, object], kind: str
) -> None:
    facts = report_facts(_report(**findings))  # type: ignore[arg-type]
    with_polarity = check_sections({"impression": text}, facts)
    assert not with_polarity.grounded
    assert {(m.kind, m.reason, m.polarity) for m in with_polarity.mismatches} == {
        (kind, "negates_a_finding", "negated")
    }
    # The checker before issue 24 (any mention in the findings passes) accepts the inversion.
    assert check_sections({"impression": text}, facts, polarity=False).grounded


# Asserted claims that contradict the findings: refused with and without polarity.
CONTRADICTIONS = [
    ("Stable disease.", {"change": "progression"}, "change"),
    ("Progression since the prior study.", {"change": "stable", "new_lesions": 0}, "change"),
    ("A new lesion has appeared.", {"new_lesions": 0}, "change"),
    ("The tumour enhances.", {"et": 0.0}, "feature"),
    ("A right-sided tumour.", {"hemisphere": "left"}, "side"),
]


@pytest.mark.parametrize(("text", "findings", "kind"), CONTRADICTIONS)
def test_an_asserted_contradiction_is_refused(
    text: str, findings: dict[str, object], kind: str
) -> None:
    facts = report_facts(_report(**findings))  # type: ignore[arg-type]
    result = check_sections({"impression": text}, facts)
    assert (kind, "not_in_findings") in {(m.kind, m.reason) for m in result.mismatches}


# Negations that agree with the findings: accepted.
HARMLESS = [
    ("No new lesion.", {"new_lesions": 0}),
    ("No new lesion or progression.", {"change": "stable", "new_lesions": 0}),
    ("Without enhancement.", {"et": 0.0}),
    ("The tumour is not enhancing.", {"et": 0.0}),
    ("Enhancement is not seen; enhancing tumour 0.0 mL.", {"et": 0.0}),
    ("Not right-sided: the tumour is in the left hemisphere.", {"hemisphere": "left"}),
    ("No progression; the disease is stable.", {"change": "stable", "new_lesions": 0}),
    ("Negative for meningioma.", {"classification": "glioblastoma"}),
    ("The tumour is not benign.", {}),
    ("Left frontal tumour without enhancement or new lesions.", {"et": 0.0, "new_lesions": 0}),
    ("Malignancy cannot be excluded, but no benign features.", {"classification": "malignant"}),
    ("No-go structures: motor cortex at high risk.", {}),
]


@pytest.mark.parametrize(("text", "findings"), HARMLESS)
def test_a_negation_that_agrees_with_the_findings_passes(
    text: str, findings: dict[str, object]
) -> None:
    facts = report_facts(_report(**findings))  # type: ignore[arg-type]
    result = check_sections({"impression": text}, facts)
    assert result.grounded, [(r.claim.text, r.reason) for r in result.refused]


@pytest.mark.parametrize(
    "text",
    [
        "No new lesions, benign.",  # does the negation run on past the comma?
        "No necrosis and a benign appearance.",
    ],
)
def test_a_term_a_negation_may_or_may_not_cover_is_refused(text: str) -> None:
    facts = report_facts(_report(new_lesions=0))
    result = check_sections({"impression": text}, facts)
    assert ("category", "ambiguous_negation") in {(m.kind, m.reason) for m in result.mismatches}


def test_negation_scope_ends_at_a_sentence_or_contrast_word() -> None:
    claims = extract_claims("No edema. Left tumour, but no enhancement; stable")
    polarity = {c.text: c.polarity for c in claims if c.kind != "number"}
    assert polarity == {
        "edema": "negated",
        "Left": "asserted",
        "tumour": "asserted",
        "enhancement": "negated",
        "stable": "asserted",
    }


@pytest.mark.parametrize(
    "findings",
    [
        {},
        {"et": 0.0, "new_lesions": 0, "change": "stable"},
        {"hemisphere": "right", "change": None, "new_lesions": None, "classification": None},
    ],
)
def test_the_template_narrative_stays_grounded(findings: dict[str, object]) -> None:
    report = _report(**findings)  # type: ignore[arg-type]
    narrative = write_narrative(report)
    result = check_sections(narrative.model_dump(), report_facts(report))
    assert result.grounded, [(r.claim.text, r.reason) for r in result.refused]


def test_a_mismatch_records_no_text_of_the_claim() -> None:
    result = check_sections({"impression": "Benign, 999 mL."}, report_facts(_report()))
    dumped = str([m.model_dump() for m in result.mismatches])
    assert result.mismatches and "999" not in dumped and "enign" not in dumped
    assert {(m.start, m.length) for m in result.mismatches} == {(0, 6), (8, 6)}
