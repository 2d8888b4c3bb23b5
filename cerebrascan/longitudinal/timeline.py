"""A patient's timeline from the study store's records (maths only; no I/O).

Dated studies are put in date order (then created time and id, as the store orders them),
whatever order they were posted in. Volumes come from each study's stored result; responses
are computed here with :func:`cerebrascan.longitudinal.response.classify_follow_up`, so a study
posted before its prior still gets the right category. Whether a new lesion appeared needs the
voxel-wise comparison of the ``delta`` analyzer: it is taken from a study's stored delta result
only when that result compared the study with the visit right before it on the timeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cerebrascan.imaging.regions import STRUCTURES
from cerebrascan.longitudinal.response import ResponseAssessment, classify_follow_up
from cerebrascan.longitudinal.settings import LongitudinalSettings
from cerebrascan.store import StudyRecord
from schemas.timeline import Timeline, TimelineResponse, TimelineVisit


def _volumes(record: StudyRecord) -> dict[str, float]:
    stored = record.findings.get("volumes_ml") or {}
    return {name: float(stored.get(name, 0.0)) for name in STRUCTURES}


def _model(record: StudyRecord) -> str:
    return f"{record.model_name}:{record.model_version}"


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
        ((r.study_date, r) for r in records if r.study_date is not None),
        key=lambda pair: (pair[0], pair[1].created_at, pair[1].study_id),
    )
    undated = [r.study_id for r in records if r.study_date is None]
    region = criteria.response_region
    visits: list[TimelineVisit] = []
    notes: list[str] = []
    new_lesion_since_baseline = False
    for index, (study_date, record) in enumerate(dated):
        volumes = _volumes(record)
        new_lesion: bool | None = None
        vs_previous = overall = None
        model_differs = False
        if index > 0:
            previous = dated[index - 1][1]
            model_differs = _model(record) != _model(previous)
            new_lesion = _delta_new_lesion(record, previous.study_id)
            if new_lesion is None:
                notes.append(
                    f"study {record.study_id}: no voxel-wise comparison with the previous "
                    "visit (analysed before that visit was stored, or without its image); new "
                    "lesions there are not known"
                )
            new_lesion_since_baseline = new_lesion_since_baseline or bool(new_lesion)
            responses = classify_follow_up(
                volumes[region],
                [_volumes(earlier)[region] for _, earlier in dated[:index]],
                new_lesion_vs_previous=bool(new_lesion),
                new_lesion_since_baseline=new_lesion_since_baseline,
                criteria=criteria,
            )
            vs_previous = _response(responses.vs_previous, previous.study_id)
            overall = _response(responses.overall, dated[0][1].study_id)
        visits.append(
            TimelineVisit(
                study_id=record.study_id,
                study_date=study_date,
                days_since_baseline=(study_date - dated[0][0]).days,
                model=_model(record),
                model_differs_from_previous=model_differs,
                volumes_ml=volumes,
                new_lesion=new_lesion,
                response_vs_previous=vs_previous,
                response_overall=overall,
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
