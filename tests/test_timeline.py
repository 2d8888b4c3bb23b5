"""Patient timelines: the prior-study query on SQLite and a real PostgreSQL server, timelines
built in date order whatever the posting order, and a three-visit phantom series posted through
the real service (``/analyze`` with identity, then ``GET /patients/{id}/timeline``)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from cerebrascan.longitudinal.settings import LongitudinalSettings
from cerebrascan.longitudinal.timeline import build_timeline
from cerebrascan.phantoms.series import PhantomVisit, SeriesPlan, generate_series
from cerebrascan.settings import Settings
from cerebrascan.store import StudyRepository, create_store_engine
from tests.atlas_options import atlas_by_voxel_index
from tests.postgres_server import postgres_server

KEY = b"timeline-test-key-0123456789"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sid(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture(scope="module")
def timeline_postgres_url() -> Iterator[str]:
    """A private PostgreSQL server for this module (see tests/postgres_server.py)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StudyRepository]:
    """An empty, migrated study store of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        url = request.getfixturevalue("timeline_postgres_url")
        engine = create_store_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()
    repository = StudyRepository(url, patient_id_key=KEY)
    yield repository
    repository.close()


def _save(
    repo: StudyRepository,
    n: int,
    study_date: date | None,
    volumes: dict[str, float] | None = None,
    *,
    patient: str = "PAT-0042",
    created: datetime = T0,
    model_version: str = "1",
) -> None:
    wt = (volumes or {}).get("ET", float(n))
    findings = {
        "study_id": _sid(n),
        "volumes_ml": volumes or {"NETC": 0.0, "SNFH": 0.0, "ET": wt, "TC": wt, "WT": wt},
    }
    repo.save_study(
        _sid(n),
        findings=findings,
        model_name="m",
        model_version=model_version,
        patient_id=patient,
        study_date=study_date,
        created_at=created,
    )


def _et(value: float) -> dict[str, float]:
    return {"NETC": 1.0, "SNFH": 5.0, "ET": value, "TC": value + 1.0, "WT": value + 6.0}


def test_prior_studies_are_earlier_dated_ones_in_date_order(repo: StudyRepository) -> None:
    d = date(2025, 3, 1)
    # posted out of date order; one undated, one on the same day, one later, one other patient
    _save(repo, 3, d - timedelta(days=10), created=T0)
    _save(repo, 1, d - timedelta(days=100), created=T0 + timedelta(hours=1))
    _save(repo, 2, d - timedelta(days=50), created=T0 + timedelta(hours=2))
    _save(repo, 4, None)
    _save(repo, 5, d)
    _save(repo, 6, d + timedelta(days=5))
    _save(repo, 7, d - timedelta(days=20), patient="PAT-0043")
    found = repo.prior_studies("PAT-0042", d, limit=10)
    assert [r.study_id for r in found] == [_sid(1), _sid(2), _sid(3)]
    assert [r.study_id for r in repo.prior_studies("PAT-0042", d, limit=2)] == [_sid(2), _sid(3)]
    excluded = repo.prior_studies("PAT-0042", d, limit=10, exclude_study_id=_sid(3))
    assert [r.study_id for r in excluded] == [_sid(1), _sid(2)]
    assert repo.prior_studies("PAT-0042", d - timedelta(days=100), limit=5) == []
    assert repo.has_patient("PAT-0042") and not repo.has_patient("PAT-9999")
    with pytest.raises(ValueError, match="limit"):
        repo.prior_studies("PAT-0042", d, limit=0)


def test_timeline_is_in_date_order_whatever_the_posting_order(repo: StudyRepository) -> None:
    base = date(2025, 1, 1)
    # posted: visit 3, visit 1, visit 2 (ET 10 -> 3 -> 6: partial response, then progression)
    _save(repo, 3, base + timedelta(days=120), _et(6.0))
    _save(repo, 1, base, _et(10.0))
    _save(repo, 2, base + timedelta(days=60), _et(3.0))
    _save(repo, 9, None, _et(1.0))
    _save(repo, 2, base + timedelta(days=60), _et(99.0))  # the same study again: kept once
    records = repo.studies_for_patient("PAT-0042")
    timeline = build_timeline("PAT-0042", records, LongitudinalSettings())
    assert [v.study_id for v in timeline.visits] == [_sid(1), _sid(2), _sid(3)]
    assert timeline.undated_study_ids == [_sid(9)]
    assert timeline.series_ml["ET"] == [10.0, 3.0, 6.0]
    assert [v.days_since_baseline for v in timeline.visits] == [0, 60, 120]
    overall = [v.response_overall.category if v.response_overall else None for v in timeline.visits]
    assert overall == [None, "partial_response", "progression"]
    assert timeline.visits[2].response_overall is not None
    assert "nadir" in timeline.visits[2].response_overall.reason
    # no stored delta result: the new-lesion status is unknown, and the timeline says so
    assert timeline.visits[1].new_lesion is None and timeline.notes


def test_timeline_flags_a_change_of_model(repo: StudyRepository) -> None:
    _save(repo, 1, date(2025, 1, 1), _et(10.0), model_version="1")
    _save(repo, 2, date(2025, 2, 1), _et(10.5), model_version="2")
    timeline = build_timeline(
        "PAT-0042", repo.studies_for_patient("PAT-0042"), LongitudinalSettings()
    )
    assert timeline.visits[1].model_differs_from_previous is True
    assert any("different models" in note for note in timeline.notes)


# ---------------------------------------------------------------- through the real service


def _write_visit(visit: PhantomVisit, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for modality, image in visit.case.images.items():
        path = folder / f"{modality}.nii.gz"
        image_file = nib.Nifti1Image(image.astype(np.float32), visit.case.affine)
        nib.save(image_file, str(path))
        paths[modality] = path
    return paths


def _post(client: Any, paths: dict[str, Path], options: dict[str, Any]) -> Any:
    files = {
        name: (path.name, path.read_bytes(), "application/octet-stream")
        for name, path in paths.items()
    }
    return client.post("/analyze", files=files, data={"options": json.dumps(options)})


@pytest.fixture(scope="module")
def posted_series(asgi_client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A three-visit series (shrink to 25 %, then regrow to 60 %) posted in date order."""
    plan = SeriesPlan(seed=2024, visit_days=(0, 63, 126), volume_factors=(1.0, 0.25, 0.6))
    visits = generate_series(plan, series_id="E2E")
    folder = tmp_path_factory.mktemp("series")
    paths = [_write_visit(v, folder / f"v{i}") for i, v in enumerate(visits)]
    analyzers = atlas_by_voxel_index(asgi_client)  # the delta analyzer registers visits itself
    options = [
        {
            "patient_id": "PAT-E2E-0001",
            "study_date": visit.study_date.isoformat(),
            "analyzers": analyzers,
        }
        for visit in visits
    ]
    answers = []
    for visit_paths, visit_options in zip(paths, options, strict=True):
        response = _post(asgi_client, visit_paths, visit_options)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return {"visits": visits, "paths": paths, "options": options, "answers": answers}


@pytest.mark.slow
def test_three_visit_series_deltas(posted_series: dict[str, Any]) -> None:
    visits, answers = posted_series["visits"], posted_series["answers"]
    first = answers[0]["analyzers"]["delta"]
    assert first["status"] == "ok" and first["result"]["computed"] is False
    assert "no study dated before" in first["result"]["reason"]
    for index in (1, 2):
        outcome = answers[index]["analyzers"]["delta"]
        assert outcome["status"] == "ok", outcome["error"]
        result = outcome["result"]
        assert result["computed"] is True
        assert result["prior_study_id"] == answers[index - 1]["study_id"]
        assert result["days_since_prior"] == 63
        assert result["model_version_differs"] is False
        expected = visits[index].truth["expected_response"]
        assert result["response_vs_previous"]["category"] == expected["vs_previous"]
        assert result["response_overall"]["category"] == expected["overall"]
        assert result["registration"]["rotation_deg"] > 0.5
        assert [a["name"] for a in outcome["artefacts"]] == ["change_map"]


@pytest.mark.slow
def test_three_visit_series_timeline_json_and_png(
    asgi_client: Any, posted_series: dict[str, Any]
) -> None:
    visits, answers = posted_series["visits"], posted_series["answers"]
    response = asgi_client.get("/patients/PAT-E2E-0001/timeline")
    assert response.status_code == 200, response.text
    timeline = response.json()
    assert [v["study_id"] for v in timeline["visits"]] == [a["study_id"] for a in answers]
    assert [v["study_date"] for v in timeline["visits"]] == [
        v.study_date.isoformat() for v in visits
    ]
    categories = (
        [(v["response_vs_previous"] or {}).get("category") for v in timeline["visits"]],
        [(v["response_overall"] or {}).get("category") for v in timeline["visits"]],
    )
    assert categories == (
        [None, "partial_response", "progression"],
        [None, "partial_response", "progression"],
    )
    assert [v["new_lesion"] for v in timeline["visits"]] == [None, False, False]
    for visit, answer, point in zip(visits, answers, timeline["visits"], strict=True):
        assert point["volumes_ml"] == pytest.approx(answer["volumes_ml"])
        # the model's ET is close to the phantom's truth (research model, loose bound)
        assert point["volumes_ml"]["WT"] == pytest.approx(visit.truth["volumes_ml"]["WT"], rel=0.3)
    png = asgi_client.get("/patients/PAT-E2E-0001/timeline?format=png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_SIGNATURE)
    from matplotlib.image import imread

    assert imread(io.BytesIO(png.content), format="png").shape[:2] == (450, 800)
    change_map = asgi_client.get(f"/studies/{answers[2]['study_id']}/artefacts/change_map")
    assert change_map.status_code == 200


@pytest.mark.slow
def test_posting_a_study_again_is_idempotent(
    asgi_client: Any, posted_series: dict[str, Any]
) -> None:
    paths, answers = posted_series["paths"], posted_series["answers"]
    again = _post(asgi_client, paths[1], posted_series["options"][1])
    assert again.status_code == 200, again.text
    assert again.json()["study_id"] == answers[1]["study_id"]
    assert again.json()["analyzers"] == answers[1]["analyzers"]
    repository = StudyRepository.from_settings(Settings())
    try:
        ids = [r.study_id for r in repository.studies_for_patient("PAT-E2E-0001")]
    finally:
        repository.close()
    assert sorted(ids) == sorted(a["study_id"] for a in answers)


def test_patient_routes_refuse_bad_and_unknown_ids(
    asgi_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unknown = asgi_client.get("/patients/PAT-NOBODY-0000/timeline")
    assert unknown.status_code == 404 and "no stored study" in unknown.text
    name = asgi_client.get("/patients/Jane%20Doe/timeline")
    assert name.status_code == 422 and "personal name" in name.text
    server_lines = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert "Jane" not in name.text and not [line for line in server_lines if "Jane" in line]
    assert any("/patients/***/timeline" in line for line in server_lines)
    bad = asgi_client.get("/patients/PAT-0001%24%25/timeline")
    assert bad.status_code == 422 and "not allowed" in bad.text
    fmt = asgi_client.get("/patients/PAT-0001/timeline?format=gif")
    assert fmt.status_code == 400 and "gif" in fmt.text
