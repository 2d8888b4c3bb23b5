"""Builders of broken NIfTI uploads, shared by the decode unit tests and the HTTP tests."""

from __future__ import annotations

import gzip
import io
import struct

import nibabel as nib
import numpy as np


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None, compress: bool = True) -> bytes:
    """Serialise an array as NIfTI-1 (gzip by default)."""
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=1) if compress else raw


def brain_like(shape: tuple[int, int, int] = (40, 48, 36), seed: int = 0) -> np.ndarray:
    """A positive ellipsoid of noise, zero outside: enough to pass decoding."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    return (rng.normal(100, 10, shape) * inside).astype(np.float32)


def truncated_gzip() -> bytes:
    full = nifti_bytes(brain_like())
    return full[: len(full) // 2]


def absurd_dimensions() -> bytes:
    """A valid header declaring 30000^3 voxels, followed by a few bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.float32)
    buffer = io.BytesIO()
    header.write_to(buffer)
    return buffer.getvalue() + b"\x00" * 4 + b"\x00" * 64


def with_value(value: float) -> bytes:
    data = brain_like()
    data[10, 10, 10] = value
    return nifti_bytes(data)


def not_nifti() -> bytes:
    return b"this is not an image\n" * 40


def png_header() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\x00" * 400


def zero_voxel_size() -> bytes:
    """A header whose first voxel size is 0 (no sform/qform, so pixdim defines the grid)."""
    raw = bytearray(nifti_bytes(brain_like(), compress=False))
    raw[80:84] = struct.pack("<f", 0.0)
    raw[252:256] = struct.pack("<hh", 0, 0)
    return gzip.compress(bytes(raw), compresslevel=1)
