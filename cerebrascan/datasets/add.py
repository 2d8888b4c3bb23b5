"""Copy a checked dataset under ``data/datasets/NAME``, ``dvc add`` it and push it (the I/O).

BraTS 2021 cases are renamed to BraTS 2023 naming and their segmentation's label 4 (ET) is
written as 3; BraTS 2023 files are copied byte for byte.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cerebrascan.datasets.check import REQUIRED, DatasetReport, file_name
from cerebrascan.datasets.scan import find_case_folders, scan_dataset

logger = logging.getLogger(__name__)

DATASETS_DIR = Path("data") / "datasets"


class DatasetError(RuntimeError):
    """The dataset was refused or could not be versioned; the message says why."""


@dataclass(frozen=True)
class AddedDataset:
    """Where a dataset went and how many cases it holds."""

    folder: Path
    dvc_file: Path
    cases: int
    pushed: bool


def dvc_executable() -> str:
    """The ``dvc`` of this environment (beside the interpreter), else the one on PATH.

    Raises:
        DatasetError: DVC is not installed.
    """
    beside = Path(sys.executable).with_name("dvc")
    if beside.exists():
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise DatasetError("dvc is not installed (pip install the project's `train` extra)")
    return found


def _run_dvc(arguments: list[str], repo: Path) -> None:
    completed = subprocess.run(
        [dvc_executable(), *arguments],
        cwd=repo,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise DatasetError(
            f"`dvc {' '.join(arguments)}` failed in {repo}: "
            f"{(completed.stderr or completed.stdout).strip()[-1500:]}"
        )


def _write_labels_4_to_3(source: Path, target: Path) -> None:
    image = nib.load(str(source))
    if not isinstance(image, nib.Nifti1Image):  # the check read it as NIfTI: changed since
        raise DatasetError(f"{source} is no longer a NIfTI image")
    labels = np.asarray(image.dataobj).astype(np.uint8)
    labels[labels == 4] = 3
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    converted = nib.Nifti1Image(labels, image.affine, header)
    converted.set_data_dtype(np.uint8)
    nib.save(converted, str(target))


def copy_dataset(root: Path, report: DatasetReport, target: Path) -> int:
    """Copy the checked cases to ``target/<case>/`` in BraTS 2023 naming; the case count."""
    folders = {folder.name: folder for folder in find_case_folders(root)}
    for case in report.cases:
        source_dir, case_dir = folders[case.case], target / case.case
        case_dir.mkdir(parents=True)
        for name in REQUIRED:
            facts = case.images[name]
            extension = ".nii.gz" if facts.name.endswith(".nii.gz") else ".nii"
            source = source_dir / facts.name
            destination = case_dir / file_name(case.case, "2023", name, extension)
            if case.naming == "2021" and name == "seg":
                _write_labels_4_to_3(source, destination)
            else:
                shutil.copyfile(source, destination)
    return len(report.cases)


def add_dataset(root: Path, name: str, repo: Path, *, push: bool = True) -> AddedDataset:
    """Check ``root``, copy it to ``repo/data/datasets/name``, ``dvc add`` and ``dvc push`` it.

    Nothing is copied when the check finds a problem; the push goes to the repository's
    default DVC remote (``cerebrascan storage configure-dvc``).

    Raises:
        DatasetError: a bad name, a problem in the dataset, an existing target, or a failed
            DVC command (what was copied stays, so the command can be rerun by hand).
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DatasetError(f"dataset name {name!r} must be one folder name")
    report = scan_dataset(root)
    if not report.ok:
        raise DatasetError(
            f"{root} has {len(report.problems)} problem(s), nothing was copied:\n"
            + "\n".join(report.problems)
        )
    target = repo / DATASETS_DIR / name
    if target.exists():
        raise DatasetError(f"{target} exists already: choose another --name")
    target.parent.mkdir(parents=True, exist_ok=True)
    count = copy_dataset(root, report, target)
    relative = str(DATASETS_DIR / name)
    _run_dvc(["add", relative], repo)
    dvc_file = target.with_name(f"{name}.dvc")
    if push:
        _run_dvc(["push", str(DATASETS_DIR / f"{name}.dvc")], repo)
    logger.info("dataset %s: %d case(s) in %s (pushed: %s)", name, count, target, push)
    return AddedDataset(folder=target, dvc_file=dvc_file, cases=count, pushed=push)
