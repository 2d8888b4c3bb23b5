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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling

from cerebrascan.errors import InputError
from cerebrascan.imaging.array_pool import pooled_empty
from cerebrascan.inputs.study import Study, Volume, check_affine, check_shape

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


@dataclass(frozen=True)
class _CheckedHeader:
    """A NIfTI file's header after every check that needs no voxel (:func:`_checked_header`)."""

    header: nib.Nifti1Header
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    affine: npt.NDArray[np.float64]
    gzipped: bool


def _checked_header(path: Path, *, field: str, max_voxels: int) -> _CheckedHeader:
    """Read and check a NIfTI file's header (dimensions, data type, voxel sizes, affine).

    Raises:
        InputError: as :func:`decode_nifti`, for everything decided before a voxel is read.
    """
    with _open_maybe_gzip(path) as stream:
        header = _read_header(stream, field)
        gzipped = isinstance(stream, gzip.GzipFile)
    shape = _spatial_shape(header, field, max_voxels)
    dtype = _data_dtype(header, field)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"voxel data type {dtype} is not a real number type", field=field)
    check_data_layout(header, dtype, field)
    zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(np.abs(zooms) <= 0) or np.any(np.abs(zooms) > 20):
        raise InputError(f"voxel sizes {zooms.tolist()} mm are not in (0, 20]", field=field)
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    check_affine(affine, field=field)
    return _CheckedHeader(header, shape, dtype, affine, gzipped)


class _GzipReader:
    """The decompressed bytes of a gzip file, read forward in bounded steps.

    One ``zlib`` call per :meth:`read` (it releases the GIL, so files decode in parallel
    threads), never more output than asked for: a gzip bomb costs no more memory than the
    header declared. Concatenated gzip members are read on as one stream, as ``gzip`` does.
    """

    def __init__(self, compressed: bytes) -> None:
        self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._input = compressed

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the data."""
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            if self._inflate.eof:
                if not self._inflate.unused_data:
                    break
                self._input = self._inflate.unused_data
                self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out = self._inflate.decompress(self._input, wanted)
            self._input = self._inflate.unconsumed_tail
            if not out and not self._input and not self._inflate.eof:
                break  # the input ended inside the stream: truncated
            parts.append(out)
            wanted -= len(out)
        return parts[0] if len(parts) == 1 else b"".join(parts)


VOXEL_CHUNK_BYTES = 4 * 2**20
"""Voxel bytes decoded per step (whole slices along the last axis): small steps reuse the
same memory, where a whole-file buffer per upload would fault in fresh pages every request."""


def _read_exactly(stream: _GzipReader | io.BufferedIOBase, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise OSError(f"Expected {size} bytes, got {len(data)} bytes")
    return data


def _read_voxels_into(
    path: Path, checked: _CheckedHeader, out: npt.NDArray[np.float32], *, field: str
) -> None:
    """Decode a checked file's voxels (scaling applied, as float32) into ``out`` of its
    spatial shape, step by step, and refuse NaN/infinite or all-zero values.

    The values are nibabel's (``header.data_from_fileobj``: the raw values in Fortran order,
    ``scl_slope``/``scl_inter`` applied), cast to float32.

    Raises:
        InputError: 400 for unreadable (truncated, corrupt) voxel data; 422 for NaN/infinite
            voxels or an image that is all zero (see :func:`check_voxel_values`).
    """
    header, (nx, ny, nz) = checked.header, checked.shape
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None else slope
    inter = 0.0 if inter is None else inter
    slice_bytes = nx * ny * checked.dtype.itemsize
    step = max(1, VOXEL_CHUNK_BYTES // slice_bytes)
    bad = 0
    nonzero = False
    try:
        with path.open("rb") as handle:
            stream: _GzipReader | io.BufferedIOBase = (
                _GzipReader(handle.read()) if checked.gzipped else handle
            )
            _read_exactly(stream, int(header.get_data_offset()))
            for start in range(0, nz, step):
                stop = min(start + step, nz)
                raw = np.frombuffer(
                    _read_exactly(stream, (stop - start) * slice_bytes), dtype=checked.dtype
                )
                values = np.asarray(apply_read_scaling(raw, slope, inter), dtype=np.float32)
                chunk = values.reshape((nx, ny, stop - start), order="F")
                bad += int(np.count_nonzero(~np.isfinite(chunk)))
                nonzero = nonzero or bool(np.any(chunk))
                out[:, :, start:stop] = chunk
    except _READ_ERRORS as exc:
        raise InputError(
            f"voxel data unreadable ({exc}); the file is probably truncated",
            status_code=400,
            field=field,
        ) from exc
    if bad:
        raise InputError(f"{bad} voxels are NaN or infinite", field=field)
    if not nonzero:
        raise InputError("every voxel is zero; the image is empty", field=field)


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
    checked = _checked_header(path, field=field, max_voxels=max_voxels)
    volume = np.empty(checked.shape, dtype=np.float32)
    _read_voxels_into(path, checked, volume, field=field)
    return Volume(data=volume, affine=checked.affine)


AFFINE_TOLERANCE_MM = 1e-2
"""Largest difference between two modalities' affine entries on one grid."""


def read_uploads(
    files: Mapping[str, Path], modalities: tuple[str, ...], *, max_voxels: int
) -> Study:
    """The study of uploaded NIfTI files, one per modality, on one grid (``POST /analyze``).

    Every header is checked first, then the grids against each other, then the voxels of the
    modalities are decoded straight into the study's array, one thread per file. When the grids
    disagree, each file is first decoded on its own, so that a file's own defect (truncated,
    NaN, all zero) is what the error names, as when files were decoded one by one.

    Args:
        files: uploaded file per modality name.
        modalities: the served model's modalities, in channel order.
        max_voxels: the most voxels a header may declare.

    Raises:
        InputError: a file cannot be decoded (see :func:`decode_nifti`), a modality is missing,
            or the grids disagree (see :func:`assemble_study`); of several bad files, the
            first in ``modalities`` order is named.
    """
    headers = {
        name: _checked_header(path, field=name, max_voxels=max_voxels)
        for name, path in files.items()
    }
    try:
        _check_one_grid(
            {name: (checked.shape, checked.affine) for name, checked in headers.items()},
            modalities,
        )
    except InputError:
        # A file's own defect (truncated, NaN, all zero) names the problem better than the grid
        # mismatch it may come with: on this error path only, decode each file on its own first.
        for name in (m for m in modalities if m in files):
            _read_voxels_into(
                files[name], headers[name], np.empty(headers[name].shape, np.float32), field=name
            )
        raise
    # the study's whole array from the process's pool (cerebrascan.imaging.array_pool)
    images = pooled_empty((len(modalities), *headers[modalities[0]].shape), np.float32)
    with ThreadPoolExecutor(max_workers=len(modalities), thread_name_prefix="decode") as pool:
        decoding = [
            pool.submit(_read_voxels_into, files[name], headers[name], images[index], field=name)
            for index, name in enumerate(modalities)
        ]
        for future in decoding:
            future.result()
    logger.debug("decoded study with shape %s", images.shape)
    return Study(images=images, affine=headers[modalities[0]].affine, modalities=tuple(modalities))


def assemble_study(
    volumes: Mapping[str, Volume],
    modalities: tuple[str, ...],
    *,
    affine_tolerance_mm: float = AFFINE_TOLERANCE_MM,
) -> Study:
    """Stack the modalities into one study after checking they share one grid.

    Args:
        volumes: decoded volume per modality name.
        modalities: the required modality names, in channel order.
        affine_tolerance_mm: largest allowed difference between affine entries.

    Raises:
        InputError: a modality is missing or unexpected, or shapes or affines disagree.
    """
    _check_one_grid(
        {name: (volume.data.shape, volume.affine) for name, volume in volumes.items()},
        modalities,
        affine_tolerance_mm=affine_tolerance_mm,
    )
    images = np.stack([volumes[m].data for m in modalities], axis=0)
    logger.debug("assembled study with shape %s", images.shape)
    return Study(images=images, affine=volumes[modalities[0]].affine, modalities=tuple(modalities))


def _check_one_grid(
    grids: Mapping[str, tuple[tuple[int, ...], npt.NDArray[np.float64]]],
    modalities: tuple[str, ...],
    *,
    affine_tolerance_mm: float = AFFINE_TOLERANCE_MM,
) -> None:
    """Every modality present, on the first one's grid (shape and affine).

    Raises:
        InputError: a modality is missing, or shapes or affines disagree.
    """
    missing = [m for m in modalities if m not in grids]
    if missing:
        raise InputError(
            f"missing modality file(s) {missing}; required: {list(modalities)}", status_code=400
        )
    reference_name = modalities[0]
    reference_shape, reference_affine = grids[reference_name]
    for name in modalities[1:]:
        shape, affine = grids[name]
        if shape != reference_shape:
            raise InputError(
                f"shape {shape} differs from {reference_name}'s {reference_shape}", field=name
            )
        difference = float(np.max(np.abs(affine - reference_affine)))
        if difference > affine_tolerance_mm:
            raise InputError(
                f"affine differs from {reference_name}'s by up to {difference:.4g} "
                f"(tolerance {affine_tolerance_mm}); modalities must be co-registered on one grid",
                field=name,
            )
