"""``cerebrascan dataset check|add``: each planted problem found, and the DVC round trip on S3.

Volumes are 16^3 so the checks are instant; the round trip runs real ``dvc`` against a moto S3
server with the IAM policies of docs/iam/ (admin pushes, a read-only GPU node pulls).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from cerebrascan.cli import main
from cerebrascan.datasets.check import classify_file
from cerebrascan.datasets.scan import scan_dataset
from cerebrascan.inputs.case_folder import list_cases, read_case, read_labels
from tests.conftest import REPO_ROOT
from tests.s3_server import AwsUser, MotoS3Server, moto_s3_server

SHAPE = (16, 16, 16)
NEW = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f", "seg": "seg"}
OLD = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
DVC = Path(sys.executable).with_name("dvc")
BUCKET = "cerebrascan-data"


def _labels(old_naming: bool) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:12, 4:12, 4:12] = 2
    labels[6:10, 6:10, 6:10] = 1
    labels[7:9, 7:9, 7:9] = 4 if old_naming else 3
    return labels


def write_case(
    root: Path, case: str, *, seed: int, old_naming: bool = False, affine: np.ndarray | None = None
) -> Path:
    """A 16^3 case folder in BraTS 2023 (or 2021) naming with distinct random contrasts."""
    folder = root / case
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names, separator = (OLD, "_") if old_naming else (NEW, "-")
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    for modality, suffix in names.items():
        if modality == "seg":
            data: np.ndarray = _labels(old_naming)
        else:
            data = rng.uniform(10, 100, SHAPE).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"{case}{separator}{suffix}.nii.gz"))
    return folder


def _path(root: Path, case: str, modality: str) -> Path:
    return root / case / f"{case}-{modality}.nii.gz"


def _rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], affine=None) -> None:
    image = nib.load(str(path))
    data = change(np.asarray(image.dataobj))
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), str(path))


def _missing(root: Path) -> None:
    _path(root, "CASE-B", "t2f").unlink()


def _grid(root: Path) -> None:
    path = _path(root, "CASE-B", "t1c")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 15), np.float32), np.eye(4)), str(path))


def _affine(root: Path) -> None:
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    _rewrite(_path(root, "CASE-B", "seg"), lambda d: d, affine=shifted)


def _labels_outside(root: Path) -> None:
    _rewrite(_path(root, "CASE-B", "seg"), lambda d: np.where(d == 2, 5, d).astype(np.uint8))


def _empty(root: Path) -> None:
    _rewrite(_path(root, "CASE-B", "t2w"), lambda d: np.zeros_like(d))


def _nan(root: Path) -> None:
    def poke(data: np.ndarray) -> np.ndarray:
        data = data.copy()
        data[3, 3, 3] = np.nan
        return data

    _rewrite(_path(root, "CASE-B", "t1n"), poke)


def _duplicate_scan(root: Path) -> None:
    copy = root / "CASE-C"
    copy.mkdir()
    for file in (root / "CASE-A").iterdir():
        shutil.copyfile(file, copy / file.name.replace("CASE-A", "CASE-C"))


def _duplicate_id(root: Path) -> None:
    write_case(root / "second-batch", "CASE-A", seed=99)


def _unreadable(root: Path) -> None:
    _path(root, "CASE-B", "t1c").write_bytes(b"not a nifti")


PLANTED = {
    "missing file": (_missing, "CASE-B: missing CASE-B-t2f.nii.gz"),
    "grid": (_grid, "CASE-B: CASE-B-t1c.nii.gz grid (16, 16, 15) differs from CASE-B-t1n.nii.gz"),
    "affine": (_affine, "CASE-B: CASE-B-seg.nii.gz affine differs from CASE-B-t1n.nii.gz"),
    "labels": (_labels_outside, "CASE-B: CASE-B-seg.nii.gz has labels 5 outside {0, 1, 2, 3}"),
    "empty": (_empty, "CASE-B: CASE-B-t2w.nii.gz is empty"),
    "nan": (_nan, "CASE-B: CASE-B-t1n.nii.gz has NaN or infinite voxels"),
    "duplicate scan": (_duplicate_scan, "CASE-C: duplicate of case CASE-A"),
    "duplicate id": (_duplicate_id, "second-batch/CASE-A: duplicate case id CASE-A"),
    "unreadable": (_unreadable, "CASE-B: CASE-B-t1c.nii.gz cannot be read"),
}


@pytest.fixture
def clean_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    write_case(root, "CASE-A", seed=1)
    write_case(root, "CASE-B", seed=2)
    return root


def test_a_clean_dataset_passes(clean_dataset: Path) -> None:
    report = scan_dataset(clean_dataset)
    assert report.ok, report.problems
    assert [c.case for c in report.cases] == ["CASE-A", "CASE-B"] and report.notes == []


@pytest.mark.parametrize("problem", sorted(PLANTED))
def test_each_planted_problem_is_one_line_and_fails_the_check(
    clean_dataset: Path, problem: str
) -> None:
    plant, expected = PLANTED[problem]
    plant(clean_dataset)
    result = CliRunner().invoke(main, ["dataset", "check", str(clean_dataset)])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines


def test_brats_2021_naming_is_recognised_with_a_note_on_label_4(tmp_path: Path) -> None:
    assert classify_file("BraTS2021_00001", "BraTS2021_00001_t1ce.nii.gz") == ("2021", "t1c")
    root = tmp_path / "brats2021"
    write_case(root, "BraTS2021_00001", seed=3, old_naming=True)
    result = CliRunner().invoke(main, ["dataset", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert (
        "label 4 (ET) to 3" in result.stderr and "1 segmentation(s) hold label 4" in result.stderr
    )
    # in 2021 naming a 3 is no BraTS label
    _rewrite(
        root / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz", lambda d: np.where(d == 4, 3, d)
    )
    report = scan_dataset(root)
    assert len(report.problems) == 1 and "labels 3 outside {0, 1, 2, 4}" in report.problems[0]


def test_add_refuses_a_dataset_with_problems_and_copies_nothing(
    clean_dataset: Path, tmp_path: Path
) -> None:
    _nan(clean_dataset)
    repo = tmp_path / "repo"
    repo.mkdir()
    result = CliRunner().invoke(
        main, ["dataset", "add", str(clean_dataset), "--name", "lab", "--repo", str(repo)]
    )
    assert result.exit_code == 1
    assert "nothing was copied" in result.output and "NaN" in result.output
    assert not (repo / "data").exists()


# --- the round trip: add (convert, dvc add, dvc push as the admin), pull on a read-only clone


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoS3Server, AwsUser, AwsUser]]:
    with moto_s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        server.client().create_bucket(Bucket=BUCKET)
        admin = server.create_user("dvc-admin", REPO_ROOT / "docs" / "iam" / "dvc-admin.json")
        reader = server.create_user("gpu-node", REPO_ROOT / "docs" / "iam" / "dvc-readonly.json")
        server.enforce_iam()
        yield server, admin, reader


def _dvc(arguments: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CEREBRASCAN_"))}
    result = subprocess.run(
        [str(DVC), *arguments],
        cwd=cwd,
        env={**clean, "DVC_NO_ANALYTICS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result


@pytest.mark.slow
def test_add_converts_pushes_and_a_read_only_clone_pulls(
    s3: tuple[MotoS3Server, AwsUser, AwsUser], tmp_path: Path
) -> None:
    server, admin, reader = s3
    source = tmp_path / "lab-export"
    write_case(source, "CASE-A", seed=1)
    write_case(source, "BraTS2021_00007", seed=2, old_naming=True)
    origin = tmp_path / "origin"
    origin.mkdir()
    assert _dvc(["init", "--no-scm"], origin, {}).returncode == 0
    storage = {
        "CEREBRASCAN_STORAGE__S3_ENDPOINT_URL": server.endpoint_url,
        "CEREBRASCAN_STORAGE__DVC_REMOTE_URL": f"s3://{BUCKET}/dvc",
    }
    runner = CliRunner()
    configured = runner.invoke(
        main, ["storage", "configure-dvc", "--repo", str(origin)], env=storage
    )
    assert configured.exit_code == 0, configured.output
    added = runner.invoke(
        main,
        ["dataset", "add", str(source), "--name", "lab1", "--repo", str(origin)],
        env=admin.environment(),
    )
    assert added.exit_code == 0, added.output
    dataset = origin / "data" / "datasets" / "lab1"
    # 2021 naming converted: the project's reader opens it, label 4 became 3
    assert [p.name for p in list_cases(dataset)] == ["BraTS2021_00007", "CASE-A"]
    converted = read_labels(dataset / "BraTS2021_00007")
    assert set(np.unique(converted)) == {0, 1, 2, 3}
    assert np.array_equal(converted == 3, _labels(old_naming=True) == 4)
    assert read_case(dataset / "BraTS2021_00007").shape == SHAPE
    stored = server.client(user=admin).list_objects_v2(Bucket=BUCKET, Prefix="dvc/")
    # every distinct file and the directory listing (DVC stores identical files once)
    distinct = {hashlib.md5(p.read_bytes()).hexdigest() for p in dataset.rglob("*.nii.gz")}
    assert stored["KeyCount"] == len(distinct) + 1
    # a read-only machine: the committed .dvc/config and lab1.dvc, no cache, no data
    clone = tmp_path / "clone"
    (clone / ".dvc").mkdir(parents=True)
    (clone / "data" / "datasets").mkdir(parents=True)
    shutil.copy(origin / ".dvc" / "config", clone / ".dvc" / "config")
    shutil.copy(origin / "data" / "datasets" / "lab1.dvc", clone / "data" / "datasets")
    pulled = _dvc(["pull"], clone, reader.environment())
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    for file in sorted(dataset.rglob("*.nii.gz")):
        copy = clone / file.relative_to(origin)
        assert copy.read_bytes() == file.read_bytes(), copy
