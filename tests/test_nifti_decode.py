"""Decoding uploads: every malformed or unusable file is an InputError naming the problem."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cerebrascan.errors import InputError
from cerebrascan.inputs import nifti
from cerebrascan.inputs.nifti import assemble_study, decode_nifti, read_uploads
from tests import nifti_faults as faults

MAX_VOXELS = 400**3


def _write(tmp_path: Path, payload: bytes, name: str = "upload.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def _decode(tmp_path: Path, payload: bytes):
    return decode_nifti(_write(tmp_path, payload), field="t1c", max_voxels=MAX_VOXELS)


def test_gzip_and_plain_nifti_decode_regardless_of_file_name(tmp_path: Path) -> None:
    data = faults.brain_like()
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    for compress in (True, False):
        volume = _decode(tmp_path, faults.nifti_bytes(data, affine, compress=compress))
        assert volume.data.dtype == np.float32
        np.testing.assert_array_equal(volume.data, data)
        assert volume.spacing == pytest.approx((1.2, 1.0, 2.0))


def test_trailing_singleton_axes_are_squeezed(tmp_path: Path) -> None:
    volume = _decode(tmp_path, faults.nifti_bytes(faults.brain_like()[..., None]))
    assert volume.data.shape == (40, 48, 36)


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (faults.not_nifti(), 400, "not a NIfTI"),
        (faults.png_header(), 400, "not a NIfTI"),
        (b"\x00" * 20, 400, "too short"),
        (faults.truncated_gzip(), 400, "truncated"),
        (faults.absurd_dimensions(), 413, "over the limit"),
        (faults.with_value(np.nan), 422, "NaN or infinite"),
        (faults.with_value(np.inf), 422, "NaN or infinite"),
        (faults.nifti_bytes(np.zeros((20, 20, 20), np.float32)), 422, "every voxel is zero"),
        (faults.nifti_bytes(np.ones((64, 64), np.float32)), 422, "2-D"),
        (faults.nifti_bytes(np.ones((16, 16, 16, 2, 3), np.float32)), 422, "5-D"),
        (faults.nifti_bytes(np.ones((16, 16, 16, 3), np.float32)), 422, "4-D"),
        (faults.nifti_bytes(np.ones((16, 16, 4), np.float32)), 422, "under 8 voxels"),
    ],
    ids=[
        "text",
        "png",
        "tiny",
        "truncated-gzip",
        "absurd-dims",
        "nan",
        "inf",
        "all-zero",
        "2d",
        "5d",
        "4d-multi",
        "thin",
    ],
)
def test_bad_files_are_refused_with_a_named_problem(
    tmp_path: Path, payload: bytes, status: int, message: str
) -> None:
    with pytest.raises(InputError, match=message) as caught:
        _decode(tmp_path, payload)
    assert caught.value.status_code == status
    assert str(caught.value).startswith("t1c: ")


def test_bad_voxel_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="voxel sizes"):
        _decode(tmp_path, faults.zero_voxel_size())


def _volumes(tmp_path: Path, **overrides: bytes) -> dict:
    payloads = {
        m: faults.nifti_bytes(faults.brain_like(seed=i))
        for i, m in enumerate(("t1n", "t1c", "t2w", "t2f"))
    }
    payloads.update(overrides)
    return {
        m: decode_nifti(_write(tmp_path, p, m), field=m, max_voxels=MAX_VOXELS)
        for m, p in payloads.items()
    }


def test_study_stacks_modalities_in_order(tmp_path: Path) -> None:
    study = assemble_study(_volumes(tmp_path), ("t1n", "t1c", "t2w", "t2f"))
    assert study.images.shape == (4, 40, 48, 36)
    assert study.modalities == ("t1n", "t1c", "t2w", "t2f")


def test_missing_modality_is_named(tmp_path: Path) -> None:
    volumes = _volumes(tmp_path)
    del volumes["t2w"]
    with pytest.raises(InputError, match=r"missing modality file\(s\) \['t2w'\]") as caught:
        assemble_study(volumes, ("t1n", "t1c", "t2w", "t2f"))
    assert caught.value.status_code == 400


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    volumes = _volumes(tmp_path, t2f=faults.nifti_bytes(faults.brain_like((40, 48, 30))))
    with pytest.raises(InputError, match=r"t2f: shape \(40, 48, 30\) differs"):
        assemble_study(volumes, ("t1n", "t1c", "t2w", "t2f"))


def test_affine_mismatch_is_named(tmp_path: Path) -> None:
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    volumes = _volumes(tmp_path, t1c=faults.nifti_bytes(faults.brain_like(), shifted))
    with pytest.raises(InputError, match="t1c: affine differs"):
        assemble_study(volumes, ("t1n", "t1c", "t2w", "t2f"))


MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def _uploads(tmp_path: Path, **overrides: bytes) -> dict[str, Path]:
    payloads = {m: faults.nifti_bytes(faults.brain_like(seed=i)) for i, m in enumerate(MODALITIES)}
    payloads.update(overrides)
    return {m: _write(tmp_path, p, m) for m, p in payloads.items()}


def _scaled_int16(seed: int) -> bytes:
    image = nib.Nifti1Image((faults.brain_like(seed=seed) * 10).astype(np.int16), np.eye(4))
    image.header.set_slope_inter(0.37, 12.5)
    return image.to_bytes()


def test_uploads_decode_into_the_study_as_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # int16 with scl_slope/scl_inter (plain file), gzip float32, several decode steps a file:
    # read_uploads (one thread per file, straight into the study) gives the values of
    # decode_nifti + assemble_study
    files = _uploads(tmp_path, t2w=_scaled_int16(seed=9))
    expected = assemble_study(
        {m: decode_nifti(p, field=m, max_voxels=MAX_VOXELS) for m, p in files.items()}, MODALITIES
    )
    monkeypatch.setattr(nifti, "VOXEL_CHUNK_BYTES", 3 * 40 * 48 * 4)
    study = read_uploads(files, MODALITIES, max_voxels=MAX_VOXELS)
    assert study.images.dtype == np.float32
    assert np.array_equal(study.images, expected.images)
    assert np.array_equal(study.affine, expected.affine)
    assert study.modalities == MODALITIES
    # scl_slope/scl_inter applied as nibabel applies them
    reference = nib.Nifti1Image.from_bytes(files["t2w"].read_bytes()).get_fdata(dtype=np.float32)
    assert np.array_equal(study.images[2], reference)


def test_uploads_name_the_first_bad_file_in_modality_order(tmp_path: Path) -> None:
    files = _uploads(
        tmp_path,
        t2f=faults.with_value(np.nan),
        t1c=faults.truncated_gzip(),
    )
    with pytest.raises(InputError, match=r"t1c: voxel data unreadable .*truncated") as caught:
        read_uploads(files, MODALITIES, max_voxels=MAX_VOXELS)
    assert caught.value.status_code == 400


def test_uploads_check_the_grids_before_any_voxel(tmp_path: Path) -> None:
    files = _uploads(tmp_path, t2f=faults.nifti_bytes(faults.brain_like((40, 48, 30))))
    with pytest.raises(InputError, match=r"t2f: shape \(40, 48, 30\) differs"):
        read_uploads(files, MODALITIES, max_voxels=MAX_VOXELS)
    del files["t2w"]
    with pytest.raises(InputError, match=r"missing modality file\(s\) \['t2w'\]"):
        read_uploads(files, MODALITIES, max_voxels=MAX_VOXELS)
