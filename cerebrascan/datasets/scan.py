"""Read a dataset folder into the facts :mod:`cerebrascan.datasets.check` judges (the I/O).

Grids and affines come from the NIfTI headers; the voxels are decoded once per file for what
the header cannot tell: NaN, empty images, the segmentation's labels and the duplicate hash.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from cerebrascan.datasets.check import (
    CaseFacts,
    DatasetReport,
    ImageFacts,
    Naming,
    check_cases,
    classify_file,
)

logger = logging.getLogger(__name__)


def _classified(folder: Path) -> dict[str, tuple[Naming, Path]]:
    found: dict[str, tuple[Naming, Path]] = {}
    for path in sorted(folder.iterdir()):
        kind = classify_file(folder.name, path.name) if path.is_file() else None
        if kind is not None:
            found[kind[1]] = (kind[0], path)
    return found


def find_case_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (at any depth) holding at least one BraTS 2023 or 2021 file."""
    return sorted(
        folder
        for folder in (root, *root.rglob("*"))
        if folder.is_dir() and any(_classified(folder))
    )


def read_image_facts(path: Path, *, labels: bool) -> ImageFacts:
    """Header facts of one NIfTI file, and the voxel facts the header cannot give.

    Raises:
        ImageFileError: not an image file nibabel knows.
        ValueError: not a NIfTI image, or not 3-D.
        OSError, EOFError, zlib.error: the file cannot be read or decompressed.
    """
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):  # a NIfTI-2 image is a Nifti1Image too
        raise ValueError(f"a {type(image).__name__}, not a NIfTI image")
    shape = tuple(int(n) for n in image.shape)
    if len(shape) != 3:
        raise ValueError(f"{len(shape)}-D image of shape {shape}, expected 3-D")
    affine = tuple(tuple(float(x) for x in row) for row in np.asarray(image.affine))
    voxels = np.asanyarray(image.dataobj)
    digest = hashlib.sha256(np.ascontiguousarray(voxels).tobytes()).hexdigest()
    return ImageFacts(
        name=path.name,
        shape=shape,
        affine=affine,
        all_finite=bool(np.isfinite(voxels).all()),
        any_nonzero=bool(np.any(voxels)),
        digest=digest,
        label_values=tuple(float(v) for v in np.unique(voxels)) if labels else (),
    )


def read_case_facts(folder: Path, root: Path) -> CaseFacts:
    """The facts of one case folder; a file that cannot be read is recorded, not raised."""
    files = _classified(folder)
    namings = sorted({naming for naming, _ in files.values()})
    location = str(folder.relative_to(root)) if folder != root else folder.name
    case = CaseFacts(case=folder.name, location=location, naming=namings[-1] if namings else "2023")
    for name, (naming, path) in files.items():
        if naming != case.naming:
            case.unreadable[name] = (
                f"{path.name} uses BraTS {naming} naming, the case {case.naming}"
            )
            continue
        try:
            case.images[name] = read_image_facts(path, labels=name == "seg")
        except (ImageFileError, OSError, ValueError, EOFError, zlib.error) as exc:
            case.unreadable[name] = f"{type(exc).__name__}: {exc}"
    return case


def scan_dataset(root: Path) -> DatasetReport:
    """Check every case folder under ``root``.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    cases = [read_case_facts(folder, root) for folder in find_case_folders(root)]
    logger.info("checked %d case folder(s) under %s", len(cases), root)
    return check_cases(cases)
