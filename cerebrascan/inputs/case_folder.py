"""Read and write BraTS-style case folders: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cerebrascan.inputs.nifti import assemble_study, decode_nifti
from cerebrascan.inputs.study import Study
from schemas.model_spec import MODALITIES

DEFAULT_MAX_VOXELS = 400 * 400 * 400


def modality_path(case_dir: Path, modality: str) -> Path:
    """Path of one modality (or ``"seg"``) in a BraTS-style case folder.

    Raises:
        FileNotFoundError: no such file in the folder.
    """
    case_id = case_dir.name
    for suffix in (".nii.gz", ".nii"):
        candidate = case_dir / f"{case_id}-{modality}{suffix}"
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{case_dir} has no {case_id}-{modality}.nii(.gz)")


def read_case(case_dir: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Study:
    """Decode the four modalities of a case folder into a :class:`Study`."""
    volumes = {
        m: decode_nifti(modality_path(case_dir, m), field=m, max_voxels=max_voxels)
        for m in MODALITIES
    }
    return assemble_study(volumes, MODALITIES)


def load_nifti_image(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI-1/2 file (voxels are read lazily, on first access).

    Raises:
        ValueError: the file is an image of another format.
    """
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):  # a NIfTI-2 image is a Nifti1Image too
        raise ValueError(f"{path} is a {type(image).__name__}, not a NIfTI image")
    return image


def read_labels(case_dir: Path) -> npt.NDArray[np.uint8]:
    """The case's reference segmentation as uint8 BraTS labels."""
    image = load_nifti_image(modality_path(case_dir, "seg"))
    return np.asarray(image.dataobj, dtype=np.uint8).reshape(image.shape[:3])


def read_phantom_tumour_type(case_dir: Path) -> str | None:
    """Tumour type a phantom's ``truth.json`` records, ``"generic"`` for an untyped phantom.

    None when the folder has no ``truth.json`` (a real case).
    """
    truth_path = case_dir / "truth.json"
    if not truth_path.exists():
        return None
    diagnosis = json.loads(truth_path.read_text()).get("diagnosis") or {}
    return str(diagnosis.get("tumour_type") or "generic")


def write_labels(
    labels: npt.NDArray[np.uint8], affine: npt.NDArray[np.float64], path: Path
) -> Path:
    """Write a uint8 label map as NIfTI-1 with the given affine."""
    image = nib.Nifti1Image(labels.astype(np.uint8), affine)
    image.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def list_cases(root: Path) -> list[Path]:
    """Case folders under ``root`` (those holding a ``<name>-t1n`` image), sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob(f"{p.name}-t1n.nii*")))
