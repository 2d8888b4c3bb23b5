"""Cohorts on a real local Ray (``cerebrascan cohort run``): the table, failures, resume, S3.

One Ray session for the module (``ray.init(num_cpus=4)``, logical), small phantoms: the session's
phantom cases cropped to 96 x 96 x 80 voxels around the tumour, so a study takes about a
second. The model is registered under its own name here (versions 1 and 2 of the bundled
model), so the session's served model is left alone.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

# no importorskip: `make test` installs the cohort extra, and a missing Ray must fail here
import ray
from click.testing import CliRunner

from cerebrascan.cohorts.ledger import RESULTS_FILE, SUMMARY_FILE, read_ledger
from cerebrascan.cohorts.locations import OutputLocation
from cerebrascan.cohorts.manifest import ManifestError, read_manifest
from cerebrascan.cohorts.results import COLUMNS
from cerebrascan.cohorts.run import CohortRequest, run_cohort, start_ray
from cerebrascan.cohorts.settings import CohortSettings
from cerebrascan.settings import Settings, StorageSettings
from cerebrascan.testing.dicom_phantoms import default_plans, write_dicom_study
from plugins.settings import PluginSettings
from schemas.analysis import AnalyzeOptions, AnalyzeResponse
from tests.s3_server import REGION, SETUP_CREDENTIALS, MotoS3Server, moto_s3_server

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
TEST_MODEL = "cohort-test-unet"
BOX = (96, 96, 80)
# the analyzers that need no atlas registration on a cropped grid: keeps a study ~1 s
ANALYZERS = ["volumetrics", "quality"]


def _crop_case(case: Path, out_dir: Path, shift: int = 0) -> Path:
    """The case cropped to :data:`BOX` around its tumour (``shift`` moves the box)."""
    labels = np.asarray(nib.load(case / f"{case.name}-seg.nii.gz").dataobj)
    centre = np.argwhere(labels > 0).mean(axis=0).astype(int)
    low = [
        int(min(max(c - b // 2 + shift, 0), n - b))
        for c, b, n in zip(centre, BOX, labels.shape, strict=True)
    ]
    box = tuple(slice(lo, lo + b) for lo, b in zip(low, BOX, strict=True))
    folder = out_dir / case.name
    folder.mkdir(parents=True, exist_ok=True)
    for modality in MODALITIES:
        image = nib.load(case / f"{case.name}-{modality}.nii.gz")
        nib.save(image.slicer[box], folder / f"{case.name}-{modality}.nii.gz")
    shutil.copy(case / "truth.json", folder / "truth.json")  # the DICOM writer reads it
    return folder


def _paths(case: Path) -> dict[str, str]:
    return {m: str(case / f"{case.name}-{m}.nii.gz") for m in MODALITIES}


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = ["study_key", "patient_id", "study_date", *MODALITIES, "dicom", "skull_stripped"]
    lines = [",".join(columns)] + [",".join(row.get(c, "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(key: str, case: Path, **override: str) -> dict[str, str]:
    return {"study_key": key, **_paths(case), **override}


def _table(out: str | Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = pq.read_table(Path(out) / RESULTS_FILE).to_pylist()
    return rows


@pytest.fixture(scope="module")
def small_cases(phantom_cases: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("cohort-cases")
    return [_crop_case(case, out) for case in phantom_cases]


@pytest.fixture(scope="module")
def test_model(registered_default_model: str) -> dict[str, str]:
    """Two versions of the bundled model under their own name: aliases ``one`` and ``two``."""
    from cerebrascan.registry import register_model_folder

    settings = Settings()
    return {
        alias: register_model_folder(
            settings, settings.bundled_model_dir, name=TEST_MODEL, alias=alias
        )
        for alias in ("one", "two")
    }


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    with moto_s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.client().create_bucket(Bucket="cohort-data")
        yield server


@pytest.fixture(scope="module")
def settings(s3_server: MotoS3Server, test_model: dict[str, str]) -> Iterator[Settings]:
    """Settings of the module's runs; S3 credentials in the environment the Ray workers get."""
    saved = {k: os.environ.get(k) for k in (*SETUP_CREDENTIALS, "AWS_DEFAULT_REGION")}
    os.environ.update({**SETUP_CREDENTIALS, "AWS_DEFAULT_REGION": REGION})
    try:
        yield Settings(
            model_name=TEST_MODEL,
            model_alias="one",
            plugins=PluginSettings(allow=ANALYZERS),
            storage=StorageSettings(s3_endpoint_url=s3_server.endpoint_url, s3_region=REGION),
            # one actor: each actor loads the model and analyzers (the mixed run uses two)
            # 4 logical CPUs on any machine: one per actor of the two-actor run, and tasks
            cohorts=CohortSettings(actors=1, local_cpus=4, object_store_mb=200),
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def local_ray(settings: Settings) -> Iterator[str]:
    """The module's Ray (4 logical CPUs) with its job server; yields the job-submission URL.

    The CLI test starts its own with :func:`start_ray`; this one adds the dashboard, which
    ``POST /cohorts`` submits to, and puts this venv's ``cerebrascan`` on the jobs' PATH.
    """
    from cerebrascan.cohorts.run import FORWARDED_ENVIRONMENT
    from cerebrascan.testing.server_process import free_port

    saved_path = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{saved_path}"
    port = free_port()
    ray.init(
        num_cpus=settings.cohorts.local_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        object_store_memory=settings.cohorts.object_store_mb * 1_000_000,
        runtime_env={
            "env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENVIRONMENT)}
        },
        log_to_driver=False,
    )
    start_ray(settings)  # already running: a no-op, as the CLI would find it
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()
        os.environ["PATH"] = saved_path


# --- the manifest, refused whole before any work --------------------------------------------


def test_manifest_refuses_duplicate_keys_naming_both_lines() -> None:
    text = "study_key,t1n,t1c,t2w,t2f\nA,a,b,c,d\nB,a,b,c,d\nA,e,f,g,h\n"
    with pytest.raises(ManifestError) as error:
        read_manifest(text.encode(), "cohort.csv")
    assert "line 4: study_key 'A' duplicates line 2" in str(error.value)
    assert error.value.status_code == 400


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("study_key,t1n,t1c,t2w,t2f\nA,a,b,c\n", "line 2: 4 fields, the header has 5"),
        ("study_key,t1n,t1c,t2w\nA,a,b,c\n", "contrast column(s) ['t2f'] missing"),
        ("study_key,t1n,t1c,t2w,t2f,age\nA,a,b,c,d,3\n", "unknown column(s) ['age']"),
        ("study_key,t1n,t1c,t2w,t2f\nA,a,b,c,d\n../x,a,b,c,d\n", "line 3: study_key '../x'"),
        ("study_key,t1n,t1c,t2w,t2f\nA,a,,c,d\n", "line 2: study 'A' has no t1c (and no dicom)"),
        (
            "study_key,study_date,t1n,t1c,t2w,t2f\nA,2024-13-01,a,b,c,d\n",
            "line 2: study_date '2024-13-01' is not an ISO date",
        ),
        ('study_key,t1n,t1c,t2w,t2f\nA,"a,b,c,d\n', "malformed CSV"),
        ("study_key,t1n,t1c,t2w,t2f\n", "the manifest lists no study"),
        ("t1n,t1c,t2w,t2f\na,b,c,d\n", "no study_key column"),
    ],
)
def test_manifest_refuses_malformed_lines_by_number(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as error:
        read_manifest(text.encode(), "cohort.csv")
    assert message in str(error.value)


def test_parquet_manifest_names_the_row(tmp_path: Path) -> None:
    import pyarrow as pa

    table = pa.table({"study_key": ["A", "A"], "dicom": ["s3://b/a.zip", "s3://b/b.zip"]})
    path = tmp_path / "cohort.parquet"
    pq.write_table(table, path)
    with pytest.raises(ManifestError, match="row 2: study_key 'A' duplicates row 1"):
        read_manifest(path.read_bytes(), path.name)


def test_cli_refuses_a_bad_manifest_before_any_work(
    tmp_path: Path, small_cases: list[Path]
) -> None:
    from cerebrascan.cli import main

    manifest = _manifest(
        tmp_path / "cohort.csv", [_row("S1", small_cases[0]), _row("S1", small_cases[1])]
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["cohort", "run", "--manifest", str(manifest), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "line 3: study_key 'S1' duplicates line 2" in result.output
    assert not out.exists()  # nothing written, no Ray started
    missing = CliRunner().invoke(
        main, ["cohort", "run", "--manifest", str(tmp_path / "none.csv"), "--out", str(out)]
    )
    assert missing.exit_code == 1
    assert "manifest: cannot read the manifest: no such file" in missing.output


# --- one run: the table equals /analyze, and failures stay rows -----------------------------


@pytest.fixture(scope="module")
def mixed_run(
    local_ray: str,
    settings: Settings,
    small_cases: list[Path],
    phantom_cases: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, object]]:
    """Two good studies and one of each kind of bad input."""
    root = tmp_path_factory.mktemp("cohort-mixed")
    good, other = small_cases
    corrupt = root / "corrupt-t1c.nii.gz"
    corrupt.write_bytes(Path(_paths(good)["t1c"]).read_bytes()[:5000])  # a truncated gzip
    shifted = _crop_case(phantom_cases[0], root / "shifted", shift=7)  # same shape, another grid
    dicom = write_dicom_study(good, root / "dicom-1", seed=20, plans=default_plans(False))
    dicom_zip = dicom.zip(root / "dicom-1.zip")
    manifest = _manifest(
        root / "cohort.csv",
        [
            _row("GOOD-1", good, patient_id="PAT-0001", study_date="2024-05-06"),
            _row("GOOD-2", other),
            _row("MISSING", good, t2w=str(root / "nowhere.nii.gz")),
            _row("CORRUPT", good, t1c=str(corrupt)),
            _row("WRONG-GRID", good, t2f=_paths(shifted)["t2f"]),
            # a scanner's study of GOOD-1's images (four series on four grids), zipped
            {"study_key": "DICOM-1", "dicom": str(dicom_zip), "skull_stripped": "true"},
            {"study_key": "DICOM-MISSING", "dicom": "s3://cohort-data/dicom/none.zip"},
        ],
    )
    out = root / "out"
    two_actors = settings.model_copy(
        update={"cohorts": settings.cohorts.model_copy(update={"actors": 2})}
    )
    summary = run_cohort(two_actors, CohortRequest(str(manifest), str(out)))
    return out, summary


def test_failures_stay_rows_and_the_rest_complete(mixed_run: tuple[Path, dict]) -> None:
    out, summary = mixed_run
    rows = {row["study_key"]: row for row in _table(out)}
    assert set(rows) == {
        "GOOD-1",
        "GOOD-2",
        "MISSING",
        "CORRUPT",
        "WRONG-GRID",
        "DICOM-1",
        "DICOM-MISSING",
    }
    assert list(pq.read_schema(out / RESULTS_FILE).names) == list(COLUMNS)
    assert rows["GOOD-1"]["status"] == rows["GOOD-2"]["status"] == "ok"
    assert rows["MISSING"]["status"] == "input_error"
    assert "missing input: t2w: no such file" in str(rows["MISSING"]["error"])
    assert rows["CORRUPT"]["status"] == "input_error"
    assert str(rows["CORRUPT"]["error"]).startswith("invalid image: t1c:")
    assert rows["WRONG-GRID"]["status"] == "input_error"
    assert "t2f" in str(rows["WRONG-GRID"]["error"])
    # the DICOM study went through the /analyze/dicom path: the same tumour as its NIfTI
    assert rows["DICOM-1"]["status"] == "ok", rows["DICOM-1"]["error"]
    assert rows["DICOM-1"]["WT_ml"] == pytest.approx(rows["GOOD-1"]["WT_ml"], rel=0.1)
    assert rows["DICOM-MISSING"]["status"] == "input_error"
    assert "missing input" in str(rows["DICOM-MISSING"]["error"])
    assert summary["counts"] == {"ok": 3, "input_error": 4, "failed": 0}
    assert summary["failures_by_reason"]["input_error: missing input"] == 2
    on_disk = json.loads((out / SUMMARY_FILE).read_text())
    assert on_disk["counts"] == summary["counts"]
    assert set(on_disk["stages"]) >= {"decode", "preprocess", "inference", "analyzers", "total"}
    for stage in on_disk["stages"].values():
        assert 0 <= stage["p50_s"] <= stage["p95_s"]
    for key in ("GOOD-1", "GOOD-2"):
        assert rows[key]["quality_passed"] is not None
        assert rows[key]["model_name"] == TEST_MODEL and rows[key]["inference_s"] > 0


def test_summary_is_an_mlflow_run(mixed_run: tuple[Path, dict], settings: Settings) -> None:
    from cerebrascan.registry import client_for

    client = client_for(settings)
    experiment = client.get_experiment_by_name("cerebrascan-cohorts")
    assert experiment is not None
    out = str(mixed_run[0])
    runs = [
        r for r in client.search_runs([experiment.experiment_id]) if r.data.params.get("out") == out
    ]
    assert len(runs) == 1
    assert runs[0].data.metrics["studies_ok"] == 3
    assert runs[0].data.metrics["studies_input_error"] == 4


def test_a_cohort_row_equals_the_pipeline_run_on_the_same_case(
    mixed_run: tuple[Path, dict], settings: Settings, small_cases: list[Path]
) -> None:
    """The cohort's label map and volumes are the service pipeline's, voxel for voxel."""
    from cerebrascan.inputs.nifti import read_uploads
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model

    out, _ = mixed_run
    pipeline = AnalysisPipeline(settings, resolve_model(settings))
    study = read_uploads(
        {m: Path(p) for m, p in _paths(small_cases[1]).items()},
        MODALITIES,
        max_voxels=settings.limits.max_voxels,
    )
    analysis = pipeline.run(study, AnalyzeOptions())
    folder = out / "studies" / "GOOD-2"
    cohort_labels = np.asarray(nib.load(folder / "segmentation.nii.gz").dataobj)
    np.testing.assert_array_equal(cohort_labels, analysis.labels)
    assert int((cohort_labels > 0).sum()) > 1000  # a real tumour, not two empty maps
    cohort_answer = AnalyzeResponse.model_validate_json((folder / "result.json").read_text())
    assert cohort_answer.volumes_ml == analysis.response.volumes_ml
    assert cohort_answer.analyzers["volumetrics"].result == (
        analysis.response.analyzers["volumetrics"].result
    )
    row = next(r for r in _table(out) if r["study_key"] == "GOOD-2")
    assert row["WT_ml"] == analysis.response.volumes_ml.WT
    assert row["NETC_ml"] == analysis.response.volumes_ml.NETC


def test_the_split_stages_give_the_one_pool_row(
    mixed_run: tuple[Path, dict], settings: Settings, small_cases: list[Path], tmp_path: Path
) -> None:
    """The network and the analysis in separate actor pools (as with GPUs) give the same
    study as one pool running both (the mixed run's layout on this CPU machine)."""
    out, _ = mixed_run
    split = settings.model_copy(
        update={"cohorts": settings.cohorts.model_copy(update={"split_at_runner": True})}
    )
    assert split.cohorts.splits and not settings.cohorts.splits
    manifest = _manifest(tmp_path / "cohort.csv", [_row("GOOD-2", small_cases[1])])
    summary = run_cohort(split, CohortRequest(str(manifest), str(tmp_path / "out")))
    assert summary["counts"]["ok"] == 1
    split_labels = nib.load(tmp_path / "out" / "studies" / "GOOD-2" / "segmentation.nii.gz")
    pooled_labels = nib.load(out / "studies" / "GOOD-2" / "segmentation.nii.gz")
    np.testing.assert_array_equal(
        np.asarray(split_labels.dataobj), np.asarray(pooled_labels.dataobj)
    )
    (row,) = _table(tmp_path / "out")
    assert row["inference_s"] > 0 and row["analyzers_s"] > 0


def test_a_cohort_row_matches_analyze_on_the_same_case(
    mixed_run: tuple[Path, dict], asgi_client, small_cases: list[Path]
) -> None:
    """``POST /analyze`` of the same files: the service's default remote runner returns float16
    probabilities (``batching.probability_dtype``, docs/serving.md), so a few boundary voxels
    may differ from the in-process runner the cohort actors use; the volumes agree closely."""
    out, _ = mixed_run
    files = {
        m: (f"{m}.nii.gz", Path(p).read_bytes(), "application/gzip")
        for m, p in _paths(small_cases[1]).items()
    }
    answer = asgi_client.post("/analyze", files=files)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    segmentation = asgi_client.get(served["segmentation_url"])
    served_labels = np.asarray(
        nib.Nifti1Image.from_bytes(gzip.decompress(segmentation.content)).dataobj
    )
    cohort_labels = np.asarray(nib.load(out / "studies" / "GOOD-2" / "segmentation.nii.gz").dataobj)
    differing = int((cohort_labels != served_labels).sum())
    print(f"voxels differing from /analyze: {differing} of {int((served_labels > 0).sum())}")
    assert differing <= 0.001 * int((served_labels > 0).sum())
    row = next(r for r in _table(out) if r["study_key"] == "GOOD-2")
    assert row["WT_ml"] == pytest.approx(served["volumes_ml"]["WT"], rel=1e-3)


def test_actors_that_cannot_all_start_are_refused_before_any_work() -> None:
    from cerebrascan.cohorts.run import CohortConfigError, _check_cluster_cpus

    wide = CohortSettings(
        actors=3,
        analysis_actors=2,
        cpus_per_analysis_actor=0.5,
        cpus_per_task=0.5,
        split_at_runner=True,
    )
    assert wide.reserved_cpus == 3 * 1.0 + 2 * 0.5 + 0.5
    # one pool (no GPUs): no analysis actors of their own
    assert CohortSettings(actors=3, analysis_actors=2).reserved_cpus == 3 * 1.0 + 1.0
    with pytest.raises(CohortConfigError, match=r"reserves 4.5 Ray CPUs \(actors=3 .* has 4"):
        _check_cluster_cpus(wide, 4.0)
    _check_cluster_cpus(wide, 4.5)  # exactly enough


def test_a_study_over_its_time_limit_is_a_failed_row(
    local_ray: str, settings: Settings, small_cases: list[Path], tmp_path: Path
) -> None:
    quick = settings.model_copy(
        update={"cohorts": settings.cohorts.model_copy(update={"study_timeout_s": 0.05})}
    )
    manifest = _manifest(tmp_path / "cohort.csv", [_row("SLOW", small_cases[0])])
    summary = run_cohort(quick, CohortRequest(str(manifest), str(tmp_path / "out")))
    (row,) = _table(tmp_path / "out")
    assert row["status"] == "failed"
    assert row["error"] == "timed out: analysis took over 0.05 s"
    assert summary["failures_by_reason"] == {"failed: timed out": 1}


# --- resume ---------------------------------------------------------------------------------


def test_rerun_does_no_work_and_an_extended_manifest_runs_only_new_studies(
    mixed_run: tuple[Path, dict], settings: Settings, small_cases: list[Path], tmp_path: Path
) -> None:
    out, _ = mixed_run
    manifest = Path(out).parent / "cohort.csv"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "ledger").iterdir()}
    again = run_cohort(settings, CohortRequest(str(manifest), str(out)))
    assert again["processed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "ledger").iterdir()} == before
    extended = tmp_path / "extended.csv"
    extended.write_text(
        manifest.read_text() + f"NEW-1,,,{','.join(_paths(small_cases[0]).values())},,\n"
    )
    grown = run_cohort(settings, CohortRequest(str(extended), str(out)))
    assert grown["processed"] == 1
    assert grown["counts"] == {"ok": 4, "input_error": 4, "failed": 0}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "ledger").iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(_table(out)) == 8


def test_a_new_model_version_invalidates_done_work(
    local_ray: str, settings: Settings, small_cases: list[Path], tmp_path: Path, test_model
) -> None:
    manifest = _manifest(
        tmp_path / "cohort.csv", [_row("V-1", small_cases[0]), _row("V-2", small_cases[1])]
    )
    out = tmp_path / "out"
    first = run_cohort(settings, CohortRequest(str(manifest), str(out), model=f"{TEST_MODEL}@one"))
    assert first["processed"] == 2
    second = run_cohort(settings, CohortRequest(str(manifest), str(out), model=f"{TEST_MODEL}@two"))
    assert second["processed"] == 2
    assert {r["model_version"] for r in _table(out)} == {test_model["two"]}
    assert test_model["one"] != test_model["two"]


def test_a_run_killed_midway_resumes_to_one_row_per_study(
    local_ray: str, settings: Settings, small_cases: list[Path], tmp_path: Path
) -> None:
    """`cohort run` in its own process (its own local Ray), killed after two studies."""
    keys = [f"K-{i}" for i in range(6)]
    manifest = _manifest(
        tmp_path / "cohort.csv", [_row(k, small_cases[i % 2]) for i, k in enumerate(keys)]
    )
    out = tmp_path / "out"
    environment = {
        **os.environ,
        "CEREBRASCAN_MODEL_NAME": TEST_MODEL,
        "CEREBRASCAN_MODEL_ALIAS": "one",
        "CEREBRASCAN_PLUGINS__ALLOW": json.dumps(ANALYZERS),
        "CEREBRASCAN_COHORTS__LOCAL_CPUS": "3",  # logical: the model and analysis actors + a task
        "CEREBRASCAN_COHORTS__OBJECT_STORE_MB": "200",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cerebrascan.cli",
            "cohort",
            "run",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--actors",
            "1",
            "--json-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environment,
        start_new_session=True,  # its Ray processes share the group: one kill ends them all
    )
    finished = 0
    deadline = time.monotonic() + 180
    assert process.stdout is not None
    for line in process.stdout:
        if json.loads(line).get("done", 0) >= 2:
            finished = json.loads(line)["done"]
            break
        assert time.monotonic() < deadline, "the cohort made no progress"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert finished == 2
    written = set(read_ledger(OutputLocation(str(out), settings.storage)))
    assert 2 <= len(written) < len(keys)  # killed midway: some studies left
    assert not (out / RESULTS_FILE).exists()
    resumed = run_cohort(settings, CohortRequest(str(manifest), str(out)))
    assert resumed["processed"] == len(keys) - len(written)
    rows = _table(out)
    assert sorted(r["study_key"] for r in rows) == keys
    assert all(r["status"] == "ok" for r in rows)


# --- S3 in, S3 out --------------------------------------------------------------------------


def test_a_cohort_reads_and_writes_s3(
    local_ray: str,
    settings: Settings,
    s3_server: MotoS3Server,
    small_cases: list[Path],
    mixed_run: tuple[Path, dict],
) -> None:
    """Manifest, images and outputs on a real S3 API; a missing object is an input_error row."""
    import io

    client = s3_server.client()
    case = small_cases[1]
    uris = {}
    for modality, path in _paths(case).items():
        key = f"archive/{case.name}/{modality}.nii.gz"
        client.put_object(Bucket="cohort-data", Key=key, Body=Path(path).read_bytes())
        uris[modality] = f"s3://cohort-data/{key}"
    rows = [
        {"study_key": "S3-GOOD", **uris},
        {"study_key": "S3-MISSING", **uris, "t1c": "s3://cohort-data/archive/gone.nii.gz"},
    ]
    columns = ["study_key", *MODALITIES]
    text = "\n".join([",".join(columns)] + [",".join(r[c] for c in columns) for r in rows])
    client.put_object(Bucket="cohort-data", Key="manifests/cohort.csv", Body=text.encode())
    request = CohortRequest("s3://cohort-data/manifests/cohort.csv", "s3://cohort-data/runs/one")
    summary = run_cohort(settings, request)
    assert summary["counts"] == {"ok": 1, "input_error": 1, "failed": 0}
    body = client.get_object(Bucket="cohort-data", Key="runs/one/results.parquet")["Body"].read()
    table = {r["study_key"]: r for r in pq.read_table(io.BytesIO(body)).to_pylist()}
    assert "no such S3 object s3://cohort-data/archive/gone.nii.gz" in table["S3-MISSING"]["error"]
    local = next(r for r in _table(mixed_run[0]) if r["study_key"] == "GOOD-2")
    assert table["S3-GOOD"]["WT_ml"] == local["WT_ml"]  # the same case read from S3
    listed = client.list_objects_v2(Bucket="cohort-data", Prefix="runs/one/studies/S3-GOOD/")
    assert {o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]} == {
        "segmentation.nii.gz",
        "result.json",
    }
    again = run_cohort(settings, request)
    assert again["processed"] == 0


# --- from the service: POST /cohorts submits a Ray job ----------------------------------------


def test_post_cohorts_refuses_a_bad_body_and_says_what_is_not_configured(asgi_client) -> None:
    bad = asgi_client.post("/cohorts", json={"manifest_uri": "http://x/m.csv", "output_uri": "/o"})
    assert bad.status_code == 400
    assert "manifest_uri" in bad.json()["error"] and "s3://bucket/key" in bad.json()["error"]
    body = {"manifest_uri": "s3://bucket-a/m.csv", "output_uri": "s3://bucket-a/out"}
    unconfigured = asgi_client.post("/cohorts", json=body)
    assert unconfigured.status_code == 503
    assert "CEREBRASCAN_COHORTS__JOB_SUBMISSION_URL" in unconfigured.json()["error"]


def test_post_cohorts_runs_a_cohort_as_a_ray_job(
    local_ray: str, settings: Settings, small_cases: list[Path], tmp_path: Path
) -> None:
    """The service's cohort routes against the module's real Ray job server."""
    from starlette.testclient import TestClient

    from cerebrascan.serving.http.cohorts import cohorts_app

    served = settings.model_copy(
        update={"cohorts": settings.cohorts.model_copy(update={"job_submission_url": local_ray})}
    )
    manifest = _manifest(tmp_path / "cohort.csv", [_row("JOB-1", small_cases[0])])
    out = tmp_path / "out"
    client = TestClient(cohorts_app(served))
    submitted = client.post(
        "/",
        json={
            "manifest_uri": str(manifest),
            "output_uri": str(out),
            "model": f"{TEST_MODEL}@one",
            "actors": 1,
        },
    )
    assert submitted.status_code == 202, submitted.text
    cohort_id = submitted.json()["id"]
    early = client.get(f"/{cohort_id}/results.parquet")
    assert early.status_code in (200, 409)  # 409 while the job runs
    deadline = time.monotonic() + 240
    while True:
        status = client.get(f"/{cohort_id}")
        assert status.status_code == 200, status.text
        if status.json()["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        assert time.monotonic() < deadline, status.json()
        time.sleep(2)
    answer = status.json()
    assert answer["status"] == "SUCCEEDED", answer
    assert answer["summary"]["counts"]["ok"] == 1
    assert answer["progress"]["done"] == 1
    table = client.get(f"/{cohort_id}/results.parquet")
    assert table.status_code == 200
    import io

    (row,) = pq.read_table(io.BytesIO(table.content)).to_pylist()
    assert row["study_key"] == "JOB-1" and row["status"] == "ok"
    assert client.get("/cohort-0000000000000000").status_code == 404
    assert client.get("/not-an-id").status_code == 400


def test_the_kuberay_rayjob_runs_a_valid_cohort_command() -> None:
    """deploy/kuberay-rayjob.yaml: the RayJob's documented fields, and an entrypoint our CLI
    parses (an option renamed in the CLI fails here, not on a cluster)."""
    import shlex

    import yaml

    from cerebrascan.cohorts.cli import cohort_run

    path = Path(__file__).resolve().parent.parent / "deploy" / "kuberay-rayjob.yaml"
    job, config = list(yaml.safe_load_all(path.read_text()))
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= 1
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["cerebrascan", "cohort", "run"]
    parsed = cohort_run.make_context("run", words[3:]).params  # raises on an unknown option
    assert parsed["manifest"].startswith("s3://") and parsed["out_uri"].startswith("s3://")
    assert parsed["ray_address"] == "auto" and parsed["gpus_per_actor"] >= 1
    assert parsed["json_progress"] is True
    # the ConfigMap's CEREBRASCAN_* names are real settings (section__field)
    assert config["kind"] == "ConfigMap"
    for name in (k for k in config["data"] if k.startswith("CEREBRASCAN_")):
        section, _, field = name.removeprefix("CEREBRASCAN_").lower().partition("__")
        assert section in Settings.model_fields, name
        if field:
            section_model = Settings.model_fields[section].annotation
            assert field in section_model.model_fields, name  # type: ignore[union-attr]


def test_post_cohorts_answers_503_when_the_ray_cluster_does_not_answer(settings: Settings) -> None:
    from starlette.testclient import TestClient

    from cerebrascan.serving.http.cohorts import cohorts_app
    from cerebrascan.testing.server_process import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    served = settings.model_copy(
        update={"cohorts": settings.cohorts.model_copy(update={"job_submission_url": nowhere})}
    )
    client = TestClient(cohorts_app(served))
    body = {"manifest_uri": "s3://bucket-a/m.csv", "output_uri": "s3://bucket-a/out"}
    answer = client.post("/", json=body)
    assert answer.status_code == 503
    assert f"the Ray cluster at {nowhere} does not answer" in answer.json()["error"]


def test_store_saves_every_study_in_the_study_store(
    local_ray: str, settings: Settings, small_cases: list[Path], tmp_path: Path
) -> None:
    """``--store``: the studies land in the configured store, with the patient linked, once
    per study key and model version however often the cohort runs."""
    from cerebrascan.store import StudyRepository

    manifest = _manifest(
        tmp_path / "cohort.csv",
        [
            _row("STORED-1", small_cases[0], patient_id="PAT-0420", study_date="2024-02-03"),
            _row("STORED-2", small_cases[1]),  # no patient: its id comes from the study key
        ],
    )
    summary = run_cohort(settings, CohortRequest(str(manifest), str(tmp_path / "out"), store=True))
    assert summary["counts"]["ok"] == 2
    answers = {
        key: json.loads((tmp_path / "out" / "studies" / key / "result.json").read_text())
        for key in ("STORED-1", "STORED-2")
    }
    record = StudyRepository.from_settings(settings).get_study(answers["STORED-1"]["study_id"])
    assert record is not None
    assert record.study_date is not None and record.study_date.isoformat() == "2024-02-03"
    assert record.model_name == TEST_MODEL
    for answer in answers.values():
        assert (settings.studies_dir / answer["study_id"] / "segmentation.nii.gz").is_file()

    # the same cohort into another output: nothing is stored twice, the stored answers return
    again = run_cohort(settings, CohortRequest(str(manifest), str(tmp_path / "again"), store=True))
    assert again["counts"]["ok"] == 2
    for key, answer in answers.items():
        rerun = json.loads((tmp_path / "again" / "studies" / key / "result.json").read_text())
        assert rerun["study_id"] == answer["study_id"]
        assert rerun["created_at"] == answer["created_at"]


def test_cohort_routes_answer_501_without_the_cohort_extra(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serving bento has no Ray. Uninstalling it here is not possible, so its absence is
    simulated: a None entry in sys.modules makes the import raise ImportError."""
    from starlette.testclient import TestClient

    from cerebrascan.serving.http.cohorts import cohorts_app

    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    served = settings.model_copy(
        update={
            "cohorts": settings.cohorts.model_copy(
                update={"job_submission_url": "http://127.0.0.1:8265"}
            )
        }
    )
    client = TestClient(cohorts_app(served))
    body = {"manifest_uri": "s3://bucket-a/m.csv", "output_uri": "s3://bucket-a/out"}
    answer = client.post("/", json=body)
    assert answer.status_code == 501
    assert "cerebrascan[cohort]" in answer.json()["error"]
    assert client.get("/cohort-0123456789abcdef").status_code == 501
