"""The study store on SQLite and a real PostgreSQL server: round trip, idempotency, ordering,
concurrent writers, migrations that keep rows, patient-id hygiene, and ``/analyze`` wiring."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa

from cerebrascan.settings import Settings
from cerebrascan.store import PatientIdError, StudyRepository, create_store_engine, migrations
from tests.atlas_options import atlas_by_voxel_index
from tests.postgres_server import postgres_server

KEY = b"test-key-0123456789abcdef"
NAME_LIKE_IDS = ("John Smith", "DOE^JOHN", "Smith", "doe,john", "ANON", "Jane-Doe-1970")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _sid(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server for the whole session (see tests/postgres_server.py)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'studies.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = create_store_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return url


@pytest.fixture
def repo(store_url: str) -> Iterator[StudyRepository]:
    repository = StudyRepository(store_url, patient_id_key=KEY)
    yield repository
    repository.close()


def _save(repo: StudyRepository, n: int, **kwargs: object) -> object:
    defaults: dict[str, object] = {
        "findings": {"study_id": _sid(n), "volumes_ml": {"WT": float(n)}},
        "model_name": "cerebrascan-brats-unet",
        "model_version": "2",
    }
    return repo.save_study(_sid(n), **{**defaults, **kwargs})


def _count(repo: StudyRepository, table: str) -> int:
    with repo.engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def test_save_and_get_round_trip(repo: StudyRepository) -> None:
    findings = {"study_id": _sid(1), "volumes_ml": {"WT": 39.874}, "analyzers": {"a": [1, None]}}
    saved = repo.save_study(
        _sid(1),
        findings=findings,
        model_name="cerebrascan-brats-unet",
        model_version="7",
        patient_id="PAT-0001",
        study_date=date(2024, 5, 6),
        created_at=T0,
        analyzer_versions={"volumetrics": "1.0.0"},
        artefacts={"segmentation": "file:///data/studies/x/segmentation.nii.gz"},
    )
    loaded = repo.get_study(_sid(1))
    assert loaded == saved
    assert loaded is not None
    # with a patient-id key every id is stored as its keyed hash (issue 18)
    assert loaded.patient_id == repo.patient_key("PAT-0001") != "PAT-0001"
    assert loaded.study_date == date(2024, 5, 6)
    assert loaded.created_at == T0 and loaded.created_at.tzinfo is not None
    assert (loaded.model_name, loaded.model_version) == ("cerebrascan-brats-unet", "7")
    assert loaded.findings == findings
    assert loaded.analyzer_versions == {"volumetrics": "1.0.0"}
    assert loaded.artefacts["segmentation"].endswith("segmentation.nii.gz")
    assert repo.get_study(_sid(2)) is None
    anonymous = _save(repo, 3)
    assert anonymous.patient_id is None and anonymous.study_date is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="NOT-HEX"):
        repo.get_study("NOT-HEX")


def test_saving_the_same_study_twice_keeps_one_record(repo: StudyRepository) -> None:
    first = _save(repo, 1, patient_id="PAT-0001", created_at=T0)
    again = _save(repo, 1, patient_id="PAT-0001", findings={"other": True})
    assert again == first
    assert _count(repo, "studies") == 1 and _count(repo, "patients") == 1


def test_studies_for_patient_by_date_then_created_time(repo: StudyRepository) -> None:
    _save(repo, 1, patient_id="PAT-1", study_date=date(2024, 3, 1), created_at=T0)
    _save(repo, 2, patient_id="PAT-1", study_date=None, created_at=T0 - timedelta(days=9))
    _save(repo, 3, patient_id="PAT-1", study_date=date(2023, 1, 1), created_at=T0)
    _save(repo, 4, patient_id="PAT-1", study_date=date(2023, 1, 1), created_at=T0 - timedelta(1))
    _save(repo, 5, patient_id="PAT-2", study_date=date(2022, 1, 1), created_at=T0)
    order = [record.study_id for record in repo.studies_for_patient("PAT-1")]
    assert order == [_sid(4), _sid(3), _sid(1), _sid(2)]
    assert repo.studies_for_patient("PAT-3") == []


def test_concurrent_writers_for_one_patient(repo: StudyRepository, store_url: str) -> None:
    """Two repositories (two engines, so two connections) x 3 threads each, all writing studies
    of one new patient at once, every thread also saving one shared study id."""
    other = StudyRepository(store_url, patient_id_key=KEY)
    threads_per_repo, studies_per_thread = 3, 4
    barrier = threading.Barrier(2 * threads_per_repo)
    errors: list[BaseException] = []

    def write(repository: StudyRepository, worker: int) -> None:
        try:
            barrier.wait(timeout=30)
            _save(repository, 999, patient_id="PAT-RACE-1")
            for i in range(studies_per_thread):
                _save(repository, 1000 + worker * 100 + i, patient_id="PAT-RACE-1")
        except Exception as exc:  # noqa: BLE001 - collected and re-raised by the test
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(repository, w * 2 + k))
        for w in range(threads_per_repo)
        for k, repository in enumerate((repo, other))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    other.close()
    assert not errors, errors
    expected = 2 * threads_per_repo * studies_per_thread + 1
    assert _count(repo, "patients") == 1
    assert _count(repo, "studies") == expected
    assert len(repo.studies_for_patient("PAT-RACE-1")) == expected


def test_upgrade_from_the_initial_revision_keeps_rows(store_url: str) -> None:
    base = migrations.ScriptDirectory.from_config(migrations.alembic_config()).get_base()
    assert base == "0001"
    engine = create_store_engine(store_url)
    migrations.upgrade(engine, base)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO patients (id, created_at) VALUES ('PAT-OLD-1', :t)"), {"t": T0}
        )
        conn.execute(
            sa.text(
                "INSERT INTO studies (id, patient_id, study_date, created_at, model_name, "
                "model_version, analyzer_versions, findings, artefacts) VALUES (:id, "
                "'PAT-OLD-1', :d, :t, 'old-model', '1', :av, :f, :a)"
            ),
            {
                "id": _sid(77),
                "d": date(2020, 2, 2),
                "t": T0,
                "av": json.dumps({"volumetrics": "0.9.0"}),
                "f": json.dumps({"volumes_ml": {"WT": 12.5}}),
                "a": json.dumps({}),
            },
        )
    engine.dispose()
    repository = StudyRepository(store_url, patient_id_key=KEY)  # runs upgrade head
    try:
        with repository.engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
        assert version == migrations.head_revision()
        (old,) = repository.studies_for_patient("PAT-OLD-1")
        assert old.study_id == _sid(77)
        assert old.findings == {"volumes_ml": {"WT": 12.5}}
        assert old.study_date == date(2020, 2, 2)
        assert old.analyzer_versions == {"volumetrics": "0.9.0"}
        _save(repository, 78, patient_id="PAT-OLD-1", study_date=date(2021, 1, 1))
        assert [r.study_id for r in repository.studies_for_patient("PAT-OLD-1")] == [
            _sid(77),
            _sid(78),
        ]
    finally:
        repository.close()


@pytest.mark.parametrize("name", NAME_LIKE_IDS)
def test_name_like_patient_ids_are_hashed_and_never_logged(
    repo: StudyRepository, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    record = _save(repo, 1, patient_id=name)
    stored = record.patient_id  # type: ignore[attr-defined]
    assert stored.startswith("hmac-") and len(stored) == 69
    assert name not in repr(record)
    assert [r.study_id for r in repo.studies_for_patient(name)] == [_sid(1)]
    with repo.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id FROM patients").scalars().all()
    assert rows == [stored]
    _save(repo, 1, patient_id=name)  # the "already stored" path logs too
    for part in name.replace("^", " ").replace(",", " ").replace("-", " ").split():
        if not part.isdigit():
            assert part not in caplog.text


def test_name_like_patient_ids_are_refused_without_a_key(store_url: str) -> None:
    repository = StudyRepository(store_url)
    try:
        with pytest.raises(PatientIdError, match="personal name") as info:
            _save(repository, 1, patient_id="John Smith")
        assert "John" not in str(info.value)
        with pytest.raises(PatientIdError, match=r"\['/'\]"):
            _save(repository, 2, patient_id="PAT/0001")
        assert _save(repository, 3, patient_id="PAT-0001").patient_id == "PAT-0001"  # type: ignore[attr-defined]
        assert _count(repository, "studies") == 1
    finally:
        repository.close()


def test_store_url_secrets_are_masked(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        store_url="postgresql+psycopg://cs:s3cret@db:5432/cerebrascan",
        patient_id_key="k" * 32,
    )
    masked = json.dumps(settings.masked())
    assert "s3cret" not in masked and "k" * 32 not in masked
    assert Settings(data_dir=tmp_path).store_database_url.startswith(f"sqlite:///{tmp_path}")


def test_analyze_with_patient_and_date_is_recorded(asgi_client, phantom_case: Path) -> None:
    from tests.test_service_asgi import _files

    options = {
        "patient_id": "PAT-ASGI-0001",
        "study_date": "2024-05-06",
        "analyzers": atlas_by_voxel_index(asgi_client),
    }
    response = asgi_client.post(
        "/analyze", files=_files(phantom_case), data={"options": json.dumps(options)}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["analyzers"]["nogo"]["status"] == "ok", answer["analyzers"]["nogo"]["error"]
    repository = StudyRepository.from_settings(Settings())
    try:
        record = repository.get_study(answer["study_id"])
        assert record is not None
        assert record.patient_id == "PAT-ASGI-0001"
        assert record.study_date == date(2024, 5, 6)
        assert record.model_version == answer["model"]["version"]
        assert record.analyzer_versions == {n: a["version"] for n, a in answer["analyzers"].items()}
        assert record.findings == asgi_client.get(f"/studies/{answer['study_id']}").json()
        assert Path(urlparse(record.artefacts["segmentation"]).path).is_file()
        assert answer["study_id"] in [
            r.study_id for r in repository.studies_for_patient("PAT-ASGI-0001")
        ]
    finally:
        repository.close()

    bad_date = asgi_client.post(
        "/analyze",
        files=_files(phantom_case),
        data={"options": json.dumps({"study_date": "06/05/2024"})},
    )
    assert bad_date.status_code == 400 and "06/05/2024" in bad_date.text
    name = asgi_client.post(
        "/analyze",
        files=_files(phantom_case),
        data={"options": json.dumps({"patient_id": "Jane Doe"})},
    )
    assert name.status_code == 422 and "personal name" in name.text
    assert "Jane" not in name.text
