"""Write phantom cases to disk in the BraTS 2023 layout (I/O).

``<out_dir>/<case_id>/<case_id>-{t1n,t1c,t2w,t2f}.nii.gz`` (float32),
``<case_id>-seg.nii.gz`` (uint8) and ``truth.json``, all on the atlas affine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from cerebrascan.phantoms.contrasts import MODALITIES
from cerebrascan.phantoms.generator import PhantomCase, PhantomParams, case_seed, generate_case
from cerebrascan.phantoms.tumour_types import GENERIC_TYPE, case_tumour_type, check_type_probs

logger = logging.getLogger(__name__)

_DEFAULT_PARAMS = PhantomParams()


def _nifti(data: np.ndarray, affine: np.ndarray, dtype: type) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    image.header.set_data_dtype(dtype)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def write_case(case: PhantomCase, out_dir: Path) -> Path:
    """Write one case as NIfTI-1 files and ``truth.json``.

    Args:
        case: the generated case.
        out_dir: parent folder; the case goes to ``out_dir / case.case_id``.

    Returns:
        The case folder.

    Raises:
        ValueError: if an image is missing or a shape does not match the segmentation.
    """
    shape = case.segmentation.shape
    missing = [mod for mod in MODALITIES if mod not in case.images]
    if missing:
        raise ValueError(f"case {case.case_id!r} lacks images {missing}")
    for mod in MODALITIES:
        if case.images[mod].shape != shape:
            raise ValueError(
                f"{mod} shape {case.images[mod].shape} differs from segmentation shape {shape}"
            )
    start = time.perf_counter()
    folder = Path(out_dir) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    for mod in MODALITIES:
        path = folder / f"{case.case_id}-{mod}.nii.gz"
        nib.save(_nifti(case.images[mod], case.affine, np.float32), path)
    nib.save(
        _nifti(case.segmentation, case.affine, np.uint8), folder / f"{case.case_id}-seg.nii.gz"
    )
    (folder / "truth.json").write_text(json.dumps(case.truth, indent=2) + "\n")
    logger.debug("wrote %s in %.2f s", folder, time.perf_counter() - start)
    return folder


def write_cohort(
    out_dir: Path,
    seed: int,
    n_cases: int,
    params: PhantomParams = _DEFAULT_PARAMS,
    prefix: str = "PHANTOM",
    type_probs: Mapping[str, float] | None = None,
) -> list[Path]:
    """Generate and write ``n_cases`` cases named ``<prefix>-<index:05d>-000``.

    Case ``k`` uses :func:`case_seed` ``(seed, k)`` and is therefore the same whatever
    ``n_cases`` is.

    Args:
        out_dir: output folder (created).
        seed: non-negative cohort seed.
        n_cases: number of cases, >= 1.
        params: generator knobs.
        prefix: case-id prefix (letters, digits, ``.``, ``_``, ``-``).
        type_probs: None renders every case with ``params``; otherwise each case's tumour
            type is drawn with these weights
            (:func:`cerebrascan.phantoms.tumour_types.case_tumour_type`; ``"generic"`` is
            ``params`` as given) and set on ``params``.

    Returns:
        The case folders in index order.

    Raises:
        ValueError: for ``n_cases < 1``, a negative seed, a bad prefix or bad ``type_probs``.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not prefix or "/" in prefix or "\\" in prefix:
        raise ValueError(f"prefix must be a non-empty name without path separators, got {prefix!r}")
    if type_probs is not None:
        check_type_probs(type_probs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for index in range(n_cases):
        case_id = f"{prefix}-{index:05d}-000"
        case_params = params
        tumour_type = GENERIC_TYPE
        if type_probs is not None:
            tumour_type = case_tumour_type(seed, index, type_probs)
            if tumour_type != GENERIC_TYPE:
                case_params = dataclasses.replace(params, tumour_type=tumour_type)
        case = generate_case(case_seed(seed, index), case_id, case_params)
        folders.append(write_case(case, out_dir))
        logger.info(
            "case %d/%d %s (%s): WT %.1f mL, TC %.1f mL, ET %.1f mL",
            index + 1,
            n_cases,
            case_id,
            tumour_type,
            case.truth["volumes_ml"]["WT"],
            case.truth["volumes_ml"]["TC"],
            case.truth["volumes_ml"]["ET"],
        )
    return folders
