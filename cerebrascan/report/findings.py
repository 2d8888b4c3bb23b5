"""Report sections from a study's stored findings (the ``AnalyzeResponse`` JSON), no I/O.

The findings are read defensively: an analyzer that is absent, failed, skipped or wrote a result
of an unexpected shape gives a section with ``available=False`` and the reason, never an error.
Analyzers whose result models this module does not import (``classification``,
``radiogenomics``, ``delta``) are read generically: string values are categories, numbers named
like a confidence are confidences, other scalars are listed by their key path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from schemas.analysis import RESEARCH_USE_NOTICE
from schemas.report import (
    BiopsyTargetEntry,
    BiopsyTargets,
    ChangeItem,
    ChangeSincePrior,
    ModelOpinion,
    NoGoStructures,
    Prediction,
    QualityFlagEntry,
    QualitySection,
    RanoSummary,
    SectionStatus,
    StructureAtRisk,
    StructureInvolvement,
    SubRegionFinding,
    Technique,
    TumourFindings,
)

logger = logging.getLogger(__name__)

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
SUB_REGION_NAMES = {
    "ET": "enhancing tumour",
    "NETC": "non-enhancing tumour core",
    "SNFH": "surrounding FLAIR hyperintensity (edema)",
    "TC": "tumour core (NETC + ET)",
    "WT": "whole tumour",
}
SUPPLIED_TEXT_KEYS = ("input_text", "metadata", "dicom", "dicom_tags", "clinical")
"""Top-level keys of a stored result that may carry text that arrived with the input."""
LABEL_KEYS = (
    "label",
    "prediction",
    "predicted_class",
    "predicted_label",
    "class",
    "category",
    "status",
    "subtype",
    "grade",
    "value",
)
CONFIDENCE_KEYS = ("confidence", "probability", "prob", "score", "p")
NAME_KEYS = ("name", "marker", "target", "task", "gene")
MAX_GENERIC_ITEMS = 40
MAX_TEXT_CHARS = 200


class ReportInputError(ValueError):
    """The stored result is not a CerebraScan findings document."""


def structure_display_name(name: str) -> str:
    """Atlas mask name as prose: ``frontal_lobe`` -> ``frontal lobe``."""
    return name.replace("_", " ").strip()


def analyzer_status(findings: Mapping[str, Any], name: str) -> tuple[dict[str, Any] | None, str]:
    """The analyzer's result and a status line.

    Returns:
        (result dict or None, reason it is absent or the empty string).
    """
    analyzers = findings.get("analyzers")
    outcome = analyzers.get(name) if isinstance(analyzers, Mapping) else None
    if not isinstance(outcome, Mapping):
        return None, f"{name} analyzer not installed or not run for this study"
    status = outcome.get("status")
    if status != "ok":
        why = outcome.get("error") or "no reason recorded"
        return None, f"{name} analyzer {status}: {str(why)[:MAX_TEXT_CHARS]}"
    result = outcome.get("result")
    if not isinstance(result, Mapping):
        return None, f"{name} analyzer returned no result"
    return dict(result), ""


def _version(findings: Mapping[str, Any], name: str) -> str | None:
    outcome = (findings.get("analyzers") or {}).get(name)
    return str(outcome.get("version")) if isinstance(outcome, Mapping) else None


def _status(findings: Mapping[str, Any], name: str, reason: str) -> SectionStatus:
    return SectionStatus(
        available=not reason, reason=reason or None, analyzer_version=_version(findings, name)
    )


def technique(findings: Mapping[str, Any]) -> Technique:
    """Study and technique section.

    Raises:
        ReportInputError: the core keys of an ``AnalyzeResponse`` are missing.
    """
    try:
        model = findings["model"]
        geometry = findings["geometry"]
        versions = {}
        for name, outcome in (findings.get("analyzers") or {}).items():
            status = outcome.get("status", "?")
            suffix = "" if status == "ok" else f" ({status})"
            versions[str(name)] = f"{outcome.get('version', '?')}{suffix}"
        return Technique(
            study_id=findings["study_id"],
            analysed_at=findings["created_at"],
            study_date=_optional_str(findings.get("study_date")),
            modalities=list(MODALITIES),
            shape=tuple(geometry["shape"]),
            spacing_mm=tuple(geometry["spacing_mm"]),
            orientation=geometry["orientation"],
            model_name=model["name"],
            model_version=str(model["version"]),
            model_alias=model["alias"],
            runner=model["runner"],
            trained_on=model.get("trained_on", "unknown"),
            analyzer_versions=versions,
            supplied_text_fields=sorted(supplied_text(findings)),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ReportInputError(f"stored findings lack a valid model/geometry: {exc}") from exc


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)[:40]


def tumour_findings(findings: Mapping[str, Any]) -> TumourFindings:
    """Per-sub-region volumes with location and spread (volumetrics, nogo overlaps)."""
    volumes = findings.get("volumes_ml") or {}
    sub_regions = [
        SubRegionFinding(code=code, name=SUB_REGION_NAMES[code], volume_ml=float(volumes[code]))
        for code in ("ET", "NETC", "SNFH", "TC", "WT")
        if isinstance(volumes.get(code), int | float)
    ]
    result, reason = analyzer_status(findings, "volumetrics")
    nogo, _ = analyzer_status(findings, "nogo")
    involved = [
        StructureInvolvement(
            name=structure_display_name(str(s["name"])), overlap_ml=float(s["overlap_ml"])
        )
        for s in _dicts((nogo or {}).get("structures"))
        if isinstance(s.get("overlap_ml"), int | float) and s["overlap_ml"] > 0 and "name" in s
    ]
    involved.sort(key=lambda s: -s.overlap_ml)
    status = _status(findings, "volumetrics", reason)
    if result is None:
        return TumourFindings(
            sub_regions=sub_regions, involved_structures=involved, location_status=status
        )
    rano = result.get("rano")
    try:
        rano_summary = (
            RanoSummary(
                slice_index=rano["slice_index"],
                longest_diameter_mm=rano["longest_diameter_mm"],
                perpendicular_diameter_mm=rano["perpendicular_diameter_mm"],
                product_mm2=rano["product_mm2"],
                measurable=rano["measurable"],
            )
            if isinstance(rano, Mapping)
            else None
        )
        return TumourFindings(
            sub_regions=sub_regions,
            hemisphere=result.get("hemisphere"),
            lesion_count=result.get("lesion_count"),
            max_diameter_mm=result.get("max_diameter_mm"),
            centroid_ras_mm=result.get("centroid_ras_mm"),
            rano=rano_summary,
            involved_structures=involved,
            location_status=status,
        )
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("volumetrics result of unexpected shape: %s", exc)
        return TumourFindings(
            sub_regions=sub_regions,
            involved_structures=involved,
            location_status=SectionStatus(
                available=False, reason=f"volumetrics result of unexpected shape: {exc}"
            ),
        )


def biopsy_targets(findings: Mapping[str, Any]) -> BiopsyTargets:
    """Biopsy targets from the hotspot analyzer."""
    result, reason = analyzer_status(findings, "hotspot")
    status = _status(findings, "hotspot", reason)
    if result is None:
        return BiopsyTargets(status=status)
    targets = []
    for target in _dicts(result.get("targets")):
        try:
            targets.append(
                BiopsyTargetEntry(
                    rank=target["rank"],
                    ras_mm=tuple(target["ras_mm"]),
                    voxel=tuple(target["voxel"]),
                    score=target["score"],
                    nearest_excluded_structure=_display_or_none(
                        target.get("nearest_excluded_structure")
                    ),
                    nearest_excluded_mm=target.get("nearest_excluded_mm"),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("skipping a hotspot target of unexpected shape: %s", exc)
    notes = [str(n)[:MAX_TEXT_CHARS] for n in result.get("notes") or [] if isinstance(n, str)]
    return BiopsyTargets(status=status, targets=targets, notes=notes)


def _display_or_none(value: object) -> str | None:
    return structure_display_name(value) if isinstance(value, str) else None


def structures_at_risk(findings: Mapping[str, Any]) -> NoGoStructures:
    """No-go structures, nearest first."""
    result, reason = analyzer_status(findings, "nogo")
    status = _status(findings, "nogo", reason)
    if result is None:
        return NoGoStructures(status=status)
    structures = []
    for entry in _dicts(result.get("structures")):
        try:
            structures.append(
                StructureAtRisk(
                    name=structure_display_name(str(entry["name"])),
                    risk=str(entry["risk"]),
                    min_distance_mm=entry.get("min_distance_mm"),
                    overlap_ml=entry.get("overlap_ml", 0.0),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("skipping a nogo structure of unexpected shape: %s", exc)
    structures.sort(
        key=lambda s: (s.min_distance_mm is None, s.min_distance_mm or 0.0, -s.overlap_ml)
    )
    notes = [str(n)[:MAX_TEXT_CHARS] for n in result.get("notes") or [] if isinstance(n, str)]
    return NoGoStructures(
        status=status,
        highest_risk=_optional_str(result.get("highest_risk")),
        high_risk_mm=_number_or_none(result.get("high_risk_mm")),
        moderate_risk_mm=_number_or_none(result.get("moderate_risk_mm")),
        structures=structures,
        notes=notes,
    )


def quality(findings: Mapping[str, Any]) -> QualitySection:
    """Quality flags."""
    result, reason = analyzer_status(findings, "quality")
    status = _status(findings, "quality", reason)
    if result is None:
        return QualitySection(status=status)
    flags = [
        QualityFlagEntry(
            code=str(flag.get("code", "?")),
            severity=str(flag.get("severity", "?")),
            message=str(flag.get("message", ""))[:MAX_TEXT_CHARS],
        )
        for flag in _dicts(result.get("flags"))
    ]
    passed = result.get("passed")
    return QualitySection(
        status=status, passed=passed if isinstance(passed, bool) else None, flags=flags
    )


def model_opinion(findings: Mapping[str, Any], name: str) -> ModelOpinion:
    """Classification or radiogenomics section, read generically (see the module docstring)."""
    result, reason = analyzer_status(findings, name)
    if result is not None and result.get("assessable") is False:
        why = str(result.get("reason") or "no reason given")[:MAX_TEXT_CHARS]
        reason = why if why.startswith("not assessable") else f"not assessable: {why}"
        result = None
    status = _status(findings, name, reason)
    if result is None:
        return ModelOpinion(status=status)
    notice = result.get("research_use_only")
    predictions = list(_predictions(result, path=""))
    if not predictions:
        predictions = [
            Prediction(name=path, value=_format_scalar(value))
            for path, value in _scalars(result, "")
        ][:MAX_GENERIC_ITEMS]
    opinion = ModelOpinion(status=status, predictions=predictions[:MAX_GENERIC_ITEMS])
    if isinstance(notice, str) and notice.strip():
        opinion.notice = notice[:MAX_TEXT_CHARS]
    return opinion


def change_since_prior(findings: Mapping[str, Any], name: str = "delta") -> ChangeSincePrior:
    """Change since prior studies, read generically from the longitudinal analyzer."""
    result, reason = analyzer_status(findings, name)
    if result is not None and result.get("computed") is False:
        reason = str(result.get("reason") or "no change computed")[:MAX_TEXT_CHARS]
        result = None
    status = _status(findings, name, reason)
    if result is None:
        return ChangeSincePrior(status=status)
    category = None
    for key in ("response_overall", "response_vs_previous", "response"):
        if isinstance(result.get(key), Mapping) and isinstance(result[key].get("category"), str):
            category = result[key]["category"][:MAX_TEXT_CHARS]
            break
    for key in ("category", "response", "status", "assessment", "rano_response"):
        if category is None and isinstance(result.get(key), str):
            category = result[key][:MAX_TEXT_CHARS]
    regions = result.get("regions")
    if isinstance(regions, Mapping) and regions:
        items = _region_changes(result, regions)
    else:
        items = [
            ChangeItem(name=path, value=_format_scalar(value))
            for path, value in _scalars(result, "")
            if not path.endswith(("_url", "url", "mask", "map"))
        ]
    return ChangeSincePrior(status=status, category=category, items=items[:MAX_GENERIC_ITEMS])


def _region_changes(result: Mapping[str, Any], regions: Mapping[str, Any]) -> list[ChangeItem]:
    """Readable lines of a per-region change result (prior, current, change)."""
    items = []
    for key in ("prior_study_date", "days_since_prior", "priors_considered"):
        if result.get(key) is not None:
            items.append(ChangeItem(name=key.replace("_", " "), value=_format_scalar(result[key])))
    for region, change in regions.items():
        if not isinstance(change, Mapping):
            continue
        prior, current = change.get("prior_ml"), change.get("current_ml")
        if not isinstance(prior, int | float) or not isinstance(current, int | float):
            continue
        line = f"{current:.1f} mL (prior {prior:.1f} mL, change {current - prior:+.1f} mL"
        relative = change.get("relative_change")
        if isinstance(relative, int | float):
            line += f", {100.0 * relative:+.0f}%"
        items.append(ChangeItem(name=str(region), value=line + ")"))
    new_lesions = result.get("new_lesions_ml")
    if isinstance(new_lesions, list):
        items.append(ChangeItem(name="new lesions", value=str(len(new_lesions))))
    for warning in result.get("warnings") or []:
        if isinstance(warning, str):
            items.append(ChangeItem(name="warning", value=warning[:MAX_TEXT_CHARS]))
    return items


def supplied_text(findings: Mapping[str, Any]) -> dict[str, str]:
    """Free text that arrived with the input (options, DICOM tags), by key path.

    Such text is data, never instructions: the LLM writer passes it as quoted JSON only.
    """
    found: dict[str, str] = {}
    for key in SUPPLIED_TEXT_KEYS:
        value = findings.get(key)
        if isinstance(value, str):
            found[key] = value[:MAX_TEXT_CHARS]
        elif isinstance(value, Mapping):
            for path, scalar in _scalars(value, key):
                if isinstance(scalar, str):
                    found[path] = scalar[:MAX_TEXT_CHARS]
    return found


def research_notice(findings: Mapping[str, Any]) -> str:
    """The findings' notice, or the project's research-use notice."""
    notice = findings.get("notice")
    return notice if isinstance(notice, str) and notice else RESEARCH_USE_NOTICE


def now_utc() -> datetime:
    """Time stamp of a report."""
    return datetime.now(UTC)


def _predictions(node: object, path: str) -> Iterator[Prediction]:
    """Predictions: dicts that hold a label-like string, with a confidence-like number."""
    if isinstance(node, Mapping):
        label_key = next((k for k in LABEL_KEYS if isinstance(node.get(k), str)), None)
        task = next((str(node[k]) for k in NAME_KEYS if isinstance(node.get(k), str)), None)
        if node.get("assessable") is False and task is not None:
            why = str(node.get("reason") or "no reason given")[:MAX_TEXT_CHARS]
            yield Prediction(name=task, value=f"not assessable ({why})")
            return
        if label_key is not None:
            name = next((str(node[k]) for k in NAME_KEYS if isinstance(node.get(k), str)), None)
            confidence = next(
                (
                    float(node[k])
                    for k in CONFIDENCE_KEYS
                    if isinstance(node.get(k), int | float) and 0.0 <= node[k] <= 1.0
                ),
                None,
            )
            yield Prediction(
                name=(name or path or label_key)[:MAX_TEXT_CHARS],
                value=str(node[label_key])[:MAX_TEXT_CHARS],
                confidence=confidence,
            )
        for key, value in node.items():
            if isinstance(value, Mapping | list):
                yield from _predictions(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, item in enumerate(node[:MAX_GENERIC_ITEMS]):
            yield from _predictions(item, f"{path}[{index}]")


def _scalars(node: object, path: str) -> Iterator[tuple[str, object]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _scalars(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, item in enumerate(node[:MAX_GENERIC_ITEMS]):
            yield from _scalars(item, f"{path}[{index}]")
    elif isinstance(node, str | int | float | bool) or node is None:
        yield path, node


def _format_scalar(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)[:MAX_TEXT_CHARS]


def _number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dicts(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []
