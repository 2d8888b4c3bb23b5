"""A patient's timeline from the study store's records (maths only; no I/O).

Dated studies are put in date order (then created time and id, as the store orders them),
whatever order they were posted in. Volumes come from each study's stored result; responses
are computed here with :func:`cerebrascan.longitudinal.classify_response`, so a study posted
before its prior still gets the right category. Whether a new lesion appeared needs the
voxel-wise comparison of the ``delta`` analyzer: it is taken from a study's stored delta result
only when that result compared the study with the visit right before it on the timeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cerebrascan.longitudinal import ResponseAssessment, classify_response
from cerebrascan.regions import STRUCTURES
from cerebrascan.settings import LongitudinalSettings
from cerebrascan.store import StudyRecord
from schemas.timeline import Timeline, TimelineResponse, TimelineVisit


def _volumes(record: StudyRecord) -> dict[str, float]:
    stored = record.findings.get("volumes_ml") or {}
    return {name: float(stored.get(name, 0.0)) for name in STRUCTURES}


def _delta_new_lesion(record: StudyRecord, previous_id: str) -> bool | None:
    """The stored delta result's new-lesion finding vs ``previous_id``, if it made one."""
    outcome: Any = (record.findings.get("analyzers") or {}).get("delta") or {}
    result = outcome.get("result") if isinstance(outcome, dict) else None
    if not isinstance(result, dict) or not result.get("computed"):
        return None
    if result.get("prior_study_id") != previous_id or result.get("registration") is None:
        return None
    return bool(result.get("new_lesions_ml"))


def _response(assessment: ResponseAssessment, reference: str) -> TimelineResponse:
    return TimelineResponse(
        category=assessment.category, reason=assessment.reason, reference_study_id=reference
    )


def build_timeline(
    patient_key: str, records: Sequence[StudyRecord], criteria: LongitudinalSettings
) -> Timeline:
    """The timeline of one patient.

    Args:
        patient_key: the stored patient key.
        records: the patient's studies (any order).
        criteria: response thresholds.

    Returns:
        Dated visits in date order with volumes and responses; undated studies listed apart.
    """
    dated = sorted(
        (r for r in records if r.study_date is not None),
        key=lambda r: (r.study_date, r.created_at, r.study_id),
    )
    undated = [r.study_id for r in records if r.study_date is None]
    region = criteria.response_region
    visits: list[TimelineVisit] = []
    notes: list[str] = []
    new_lesion_since_baseline = False
    for index, record in enumerate(dated):
        volumes = _volumes(record)
        model = f"{record.model_name}:{record.model_version}"
        if index == 0:
            baseline_date = record.study_date
            visits.append(
                TimelineVisit(
                    study_id=record.study_id,
                    study_date=record.study_date,  # type: ignore[arg-type]
                    days_since_baseline=0,
                    model=model,
                    model_differs_from_previous=False,
                    volumes_ml=volumes,
                    new_lesion=None,
                    response_vs_previous=None,
                    response_overall=None,
                )
            )
            continue
        previous = dated[index - 1]
        new_lesion = _delta_new_lesion(record, previous.study_id)
        if new_lesion is None:
            notes.append(
                f"study {record.study_id}: no voxel-wise comparison with the previous visit "
                "(analysed before that visit was stored, or without its image); new lesions "
                "there are not known"
            )
        new_lesion_since_baseline = new_lesion_since_baseline or bool(new_lesion)
        current_ml = volumes[region]
        previous_ml = _volumes(previous)[region]
        earlier = [_volumes(r)[region] for r in dated[:index]]
        nadir_ml = min(earlier)
        vs_previous = classify_response(
            current_ml,
            baseline_ml=previous_ml,
            nadir_ml=previous_ml,
            new_lesion=bool(new_lesion),
            criteria=criteria,
        )
        overall = classify_response(
            current_ml,
            baseline_ml=earlier[0],
            nadir_ml=nadir_ml,
            new_lesion=new_lesion_since_baseline,
            criteria=criteria,
        )
        visits.append(
            TimelineVisit(
                study_id=record.study_id,
                study_date=record.study_date,  # type: ignore[arg-type]
                days_since_baseline=(record.study_date - baseline_date).days,  # type: ignore[operator]
                model=model,
                model_differs_from_previous=model
                != f"{previous.model_name}:{previous.model_version}",
                volumes_ml=volumes,
                new_lesion=new_lesion,
                response_vs_previous=_response(vs_previous, previous.study_id),
                response_overall=_response(overall, dated[0].study_id),
            )
        )
    if any(v.model_differs_from_previous for v in visits):
        notes.append("visits were segmented by different models: changes mix disease and model")
    return Timeline(
        patient_id=patient_key,
        response_region=region,
        thresholds={
            "partial_response_change": criteria.partial_response_change,
            "progression_change": criteria.progression_change,
            "complete_response_max_ml": criteria.complete_response_max_ml,
            "new_lesion_min_ml": criteria.new_lesion_min_ml,
        },
        visits=visits,
        series_ml={name: [v.volumes_ml[name] for v in visits] for name in STRUCTURES},
        undated_study_ids=undated,
        notes=notes,
    )
