"""Decode uploaded NIfTI files safely: header first, bounded reads, never trust the extension.

A header is parsed and checked (dimensions, data type, voxel sizes, declared size) before any
voxel is read, so a header claiming absurd dimensions costs nothing and a gzip bomb cannot make
the server allocate more than the header declared.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from cerebrascan.errors import InputError
from cerebrascan.inputs.study import Study, Volume, check_affine, check_shape, check_voxel_values

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
# OverflowError: numpy's memmap of a plain file whose header declares a data size it cannot map
_READ_ERRORS = (
    EOFError,
    OSError,
    OverflowError,
    zlib.error,
    gzip.BadGzipFile,
    ValueError,
    HeaderDataError,
)


def _open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb")
    return path.open("rb")


def _read_header(stream: io.BufferedIOBase, field: str) -> nib.Nifti1Header:
    try:
        head = stream.read(540)
    except _READ_ERRORS as exc:
        raise InputError(
            f"cannot read file ({exc}); is it truncated?", status_code=400, field=field
        ) from exc
    if len(head) < 348:
        raise InputError(
            f"only {len(head)} bytes, too short for a NIfTI header (348 bytes)",
            status_code=400,
            field=field,
        )
    if head[344:348] == b"ni1\x00" or head[4:8] == b"ni2\x00":
        raise InputError(
            "header-only NIfTI (.hdr/.img pair) is not accepted; upload a single .nii or .nii.gz",
            status_code=400,
            field=field,
        )
    header_class: type[nib.Nifti1Header]
    if head[344:348] == b"n+1\x00":
        header_class, size = nib.Nifti1Header, 348
    elif len(head) >= 540 and head[4:8] == b"n+2\x00":
        header_class, size = nib.Nifti2Header, 540
    else:
        raise InputError(
            "not a NIfTI-1/NIfTI-2 image (no NIfTI magic in the header); upload .nii or .nii.gz",
            status_code=400,
            field=field,
        )
    try:
        # check=False: nibabel would silently "fix" zero voxel sizes to 1; we refuse them instead.
        header: nib.Nifti1Header = header_class.from_fileobj(_Replay(head[:size]), check=False)
    except _READ_ERRORS as exc:
        raise InputError(f"invalid NIfTI header ({exc})", status_code=400, field=field) from exc
    return header


class _Replay:
    """A read-only file object over bytes already read (for nibabel's header parser)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = (
            pos if whence == 0 else self._pos + pos if whence == 1 else len(self._data) + pos
        )
        return self._pos

    def tell(self) -> int:
        return self._pos


MAX_VOX_OFFSET = 1024 * 1024
"""Most bytes before the voxel data (header and extensions): a larger ``vox_offset`` would make
the decoder skip (for gzip: decompress) that much before reading a voxel."""
MAX_BYTES_PER_VOXEL = 8
"""Widest voxel type read (float64 / int64): a wider one multiplies the memory a header's
declared shape costs."""


def check_data_layout(header: nib.Nifti1Header, dtype: np.dtype[Any], field: str) -> None:
    """Refuse a header whose ``vox_offset`` or bytes per voxel are out of bounds (400).

    Raises:
        InputError: ``vox_offset`` not a whole number in [header size, :data:`MAX_VOX_OFFSET`],
            or ``bitpix``/the data type over :data:`MAX_BYTES_PER_VOXEL` bytes a voxel.
    """
    offset = float(header["vox_offset"])
    minimum = int(header.sizeof_hdr)
    if not np.isfinite(offset) or offset != int(offset) or not minimum <= offset <= MAX_VOX_OFFSET:
        raise InputError(
            f"header field vox_offset {offset:g} is not a whole number of bytes in "
            f"[{minimum}, {MAX_VOX_OFFSET}]",
            status_code=400,
            field=field,
        )
    bytes_per_voxel = max(dtype.itemsize, int(header["bitpix"]) // 8)
    if bytes_per_voxel > MAX_BYTES_PER_VOXEL:
        raise InputError(
            f"header field bitpix/datatype declares {bytes_per_voxel} bytes per voxel; at most "
            f"{MAX_BYTES_PER_VOXEL} are read",
            status_code=400,
            field=field,
        )


def _spatial_shape(header: nib.Nifti1Header, field: str, max_voxels: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in header.get_data_shape())
    if len(shape) < 3:
        raise InputError(
            f"image is {len(shape)}-D with shape {shape}; a 3-D volume is required", field=field
        )
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise InputError(
            f"image is {len(shape)}-D with shape {shape}; only 3-D volumes (extra axes of size 1) "
            "are accepted",
            field=field,
        )
    spatial = shape[:3]
    if any(s < 1 for s in spatial):
        raise InputError(f"image has an empty dimension, shape {spatial}", field=field)
    check_shape(spatial, field=field, max_voxels=max_voxels)
    return (spatial[0], spatial[1], spatial[2])


def _data_dtype(header: nib.Nifti1Header, field: str) -> np.dtype[Any]:
    """The voxel type the header declares (400 for a ``datatype`` code NIfTI does not define)."""
    try:
        dtype: np.dtype[Any] = np.dtype(header.get_data_dtype())
    except KeyError:
        raise InputError(
            f"header field datatype {int(header['datatype'])} is not a NIfTI data type code",
            status_code=400,
            field=field,
        ) from None
    return dtype


def decode_nifti(path: Path, *, field: str, max_voxels: int) -> Volume:
    """Read one NIfTI-1/2 file (plain or gzip) into a float32 volume.

    Args:
        path: the uploaded file; its name and extension are ignored.
        field: the request field (modality) it came from, used in error messages.
        max_voxels: the most voxels a header may declare.

    Returns:
        The voxels as float32 (scaling applied) and the header's best affine.

    Raises:
        InputError: 400 for bytes that are not a readable NIfTI (wrong format, truncated), 413 for
            a declared size over ``max_voxels``, 422 for a readable image that cannot be analysed
            (not 3-D, bad voxel sizes or affine, NaN/inf voxels, all zero).
    """
    with _open_maybe_gzip(path) as stream:
        header = _read_header(stream, field)
        shape = _spatial_shape(header, field, max_voxels)
        dtype = _data_dtype(header, field)
        if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
            raise InputError(f"voxel data type {dtype} is not a real number type", field=field)
        check_data_layout(header, dtype, field)
        zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)
        if (
            not np.all(np.isfinite(zooms))
            or np.any(np.abs(zooms) <= 0)
            or np.any(np.abs(zooms) > 20)
        ):
            raise InputError(f"voxel sizes {zooms.tolist()} mm are not in (0, 20]", field=field)
        best_affine = header.get_best_affine()
        affine = np.asarray(best_affine, dtype=np.float64)
        check_affine(affine, field=field)
        try:
            stream.seek(0)
            data = header.data_from_fileobj(stream)
        except _READ_ERRORS as exc:
            raise InputError(
                f"voxel data unreadable ({exc}); the file is probably truncated",
                status_code=400,
                field=field,
            ) from exc
    volume = np.asarray(data, dtype=np.float32).reshape(shape)
    check_voxel_values(volume, field=field)
    return Volume(data=volume, affine=affine)


def read_uploads(
    files: Mapping[str, Path], modalities: tuple[str, ...], *, max_voxels: int
) -> Study:
    """The study of uploaded NIfTI files, one per modality, on one grid (``POST /analyze``).

    Args:
        files: uploaded file per modality name.
        modalities: the served model's modalities, in channel order.
        max_voxels: the most voxels a header may declare.

    Raises:
        InputError: a file cannot be decoded (see :func:`decode_nifti`), a modality is missing,
            or the grids disagree (see :func:`assemble_study`).
    """
    volumes = {
        name: decode_nifti(path, field=name, max_voxels=max_voxels) for name, path in files.items()
    }
    return assemble_study(volumes, modalities)


def assemble_study(
    volumes: Mapping[str, Volume],
    modalities: tuple[str, ...],
    *,
    affine_tolerance_mm: float = 1e-2,
) -> Study:
    """Stack the modalities into one study after checking they share one grid.

    Args:
        volumes: decoded volume per modality name.
        modalities: the required modality names, in channel order.
        affine_tolerance_mm: largest allowed difference between affine entries.

    Raises:
        InputError: a modality is missing or unexpected, or shapes or affines disagree.
    """
    missing = [m for m in modalities if m not in volumes]
    if missing:
        raise InputError(
            f"missing modality file(s) {missing}; required: {list(modalities)}", status_code=400
        )
    reference_name = modalities[0]
    reference = volumes[reference_name]
    for name in modalities[1:]:
        other = volumes[name]
        if other.data.shape != reference.data.shape:
            raise InputError(
                f"shape {other.data.shape} differs from {reference_name}'s {reference.data.shape}",
                field=name,
            )
        difference = float(np.max(np.abs(other.affine - reference.affine)))
        if difference > affine_tolerance_mm:
            raise InputError(
                f"affine differs from {reference_name}'s by up to {difference:.4g} "
                f"(tolerance {affine_tolerance_mm}); modalities must be co-registered on one grid",
                field=name,
            )
    images = np.stack([volumes[m].data for m in modalities], axis=0)
    logger.debug("assembled study with shape %s", images.shape)
    return Study(images=images, affine=reference.affine, modalities=tuple(modalities))
