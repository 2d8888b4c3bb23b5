"""The DICOM input below HTTP: archive safety, series selection, volumes and their geometry.

Volumes are compared with the dcm2niix wheel's output on the same phantom series (axial,
oblique, descending coronal) and with nibabel's real Philips multiframe header; pydicom's
bundled files give the compressed, truncated and geometry-less cases.
"""

from __future__ import annotations

import copy
import gzip
import os
import stat
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from cerebrascan.errors import InputError
from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.inputs.dicom.archive import unpack_archive
from cerebrascan.inputs.dicom.geometry import check_stack, series_frames, stack_affine_ras
from cerebrascan.inputs.dicom.grid import reorient, resample_to_grid
from cerebrascan.inputs.dicom.index import IndexedSeries, Instance, StudyIndex, index_files
from cerebrascan.inputs.dicom.selection import (
    condition_matches,
    load_rules,
    select_series,
)
from cerebrascan.inputs.dicom.settings import DicomSettings
from cerebrascan.inputs.dicom.study_builder import build_study, choose_series
from cerebrascan.inputs.dicom.upload import read_dicom_study
from cerebrascan.inputs.dicom.volumes import build_volume
from cerebrascan.testing.dicom_phantoms import PATIENT

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
MAX_VOXELS = 400**3
SETTINGS = DicomSettings()


@pytest.fixture(scope="session")
def dicom_index(dicom_phantom) -> StudyIndex:
    return index_files((p.name, p) for p in dicom_phantom.files)


@pytest.fixture(scope="session")
def rules():
    return load_rules()


def _series(index: StudyIndex, uid: str) -> IndexedSeries:
    found = index.by_uid(uid)
    assert found is not None
    return found


def _with_headers(series: IndexedSeries, change, uid: str | None = None) -> IndexedSeries:
    """A copy of ``series`` whose headers ``change(number, header)`` edited (pixels untouched)."""
    instances = []
    ordered = sorted(series.instances, key=lambda i: int(i.header.InstanceNumber))
    for number, instance in enumerate(ordered):
        header = copy.deepcopy(instance.header)
        change(number, header)
        if uid is not None:
            header.SeriesInstanceUID = uid
        instances.append(Instance(instance.name, instance.path, header))
    return IndexedSeries(uid or series.series_uid, series.study_uid, tuple(instances))


# --- archive -------------------------------------------------------------------------------


def _zip_with(path: Path, name: str, data: bytes = b"x", mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if mode is not None:
            info.external_attr = mode << 16
        archive.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("name", "mode", "words"),
    [
        ("../../etc/evil.dcm", None, "'..'"),
        ("/etc/evil.dcm", None, "absolute path"),
        ("C:/evil.dcm", None, "absolute path"),
        ("study/link.dcm", stat.S_IFLNK | 0o777, "symbolic link"),
        ("study/dev", stat.S_IFCHR | 0o600, "character device"),
        ("study/fifo", stat.S_IFIFO | 0o600, "named pipe"),
    ],
)
def test_archive_refuses_unsafe_members(tmp_path: Path, name: str, mode, words: str) -> None:
    archive = _zip_with(tmp_path / "bad.zip", name, b"/etc/passwd", mode)
    with pytest.raises(InputError) as caught:
        unpack_archive(archive, tmp_path / "out", SETTINGS)
    assert caught.value.status_code == 400
    assert name in str(caught.value) and words in str(caught.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_archive_refuses_a_zip_bomb(tmp_path: Path) -> None:
    archive = _zip_with(tmp_path / "bomb.zip", "a/bomb.dcm", bytes(32 * 1024 * 1024))
    assert archive.stat().st_size < 100_000
    with pytest.raises(InputError) as caught:
        unpack_archive(archive, tmp_path / "out", SETTINGS)
    assert caught.value.status_code == 413
    assert "a/bomb.dcm" in str(caught.value) and "compression ratio" in str(caught.value)


def test_archive_caps_members_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for number in range(5):
            archive.writestr(f"f{number}.dcm", os.urandom(2000))
    with pytest.raises(InputError, match="5 files, over the limit of 4") as caught:
        unpack_archive(path, tmp_path / "a", DicomSettings(max_members=4))
    assert caught.value.status_code == 413
    with pytest.raises(InputError, match=r"f0.dcm.*inflates to 2000 bytes") as caught:
        unpack_archive(path, tmp_path / "b", DicomSettings(max_member_mb=0.001))
    assert caught.value.status_code == 413
    with pytest.raises(InputError, match="not a readable zip") as caught:
        unpack_archive(Path(get_testdata_file("MR_small.dcm")), tmp_path / "c", SETTINGS)
    assert caught.value.status_code == 400


def test_archive_skips_what_is_not_a_study(tmp_path: Path, dicom_phantom) -> None:
    one_file = dicom_phantom.files[0]
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(one_file, "PATIENT/STUDY/IM0001")
        archive.writestr("__MACOSX/PATIENT/._IM0001", b"resource fork")
        archive.writestr("PATIENT/DICOMDIR", b"not read")
        archive.writestr("README.txt", b"a note")
        archive.writestr("PATIENT/folder/", b"")
    files = unpack_archive(path, tmp_path / "out", SETTINGS)
    assert [name for name, _ in files.files] == ["PATIENT/STUDY/IM0001", "README.txt"]
    index = index_files(files.files, files.skipped)
    assert len(index.series) == 1
    skipped = " ".join(index.skipped)
    assert "__MACOSX" in skipped and "DICOMDIR" in skipped and "README.txt: not a DICOM" in skipped


# --- selection -----------------------------------------------------------------------------


def test_default_rules_pick_the_four_contrasts(dicom_index, dicom_phantom, rules) -> None:
    selection = select_series(dicom_index, rules, MODALITIES, min_slices=20)
    assert selection.problems == []
    chosen = {role: c.series.series_uid for role, c in selection.choices.items()}
    assert chosen == dicom_phantom.series_uids
    # the 2D post-contrast T1 was a candidate too: the 3D MPRAGE wins the tie-break
    assert len(selection.candidates["t1c"]) == 2
    assert "3D acquisition" in selection.choices["t1c"].reason
    assert selection.choices["t2f"].rule.startswith("t2f #4")
    localizer = next(s for s in dicom_index.series if s.slice_count == 3)
    assert "3 slices, under dicom.min_slices=20" in selection.rejected[localizer.series_uid][0]
    diffusion = [s for s in dicom_index.series if "diff" in s.header.SeriesDescription]
    assert len(diffusion) == 2  # the trace (TR/TE of a T2) and the ADC map
    for series in diffusion:
        reasons = selection.rejected[series.series_uid]
        assert any(r.startswith("not t2w") and "ImageType" in r for r in reasons), reasons


def test_missing_contrast_is_refused_with_candidates(dicom_index, dicom_phantom, rules) -> None:
    without_flair = StudyIndex(
        tuple(s for s in dicom_index.series if s.series_uid != dicom_phantom.series_uids["t2f"])
    )
    with pytest.raises(InputError) as caught:
        choose_series(without_flair, rules, MODALITIES, SETTINGS, None)
    assert caught.value.status_code == 422
    assert "no series matches the rules for t2f" in str(caught.value)
    assert dicom_phantom.series_uids["t2w"] in str(caught.value)  # the candidates to map


def test_two_studies_are_refused_unless_mapped(dicom_index, dicom_phantom, rules) -> None:
    def other_study(number: int, header: pydicom.Dataset) -> None:
        header.StudyInstanceUID = "1.2.3.4.5.6"

    t2w = _series(dicom_index, dicom_phantom.series_uids["t2w"])
    moved = _with_headers(t2w, other_study)
    moved = IndexedSeries(moved.series_uid, "1.2.3.4.5.6", moved.instances)
    index = StudyIndex(tuple(moved if s is t2w else s for s in dicom_index.series))
    with pytest.raises(InputError) as caught:
        choose_series(index, rules, MODALITIES, SETTINGS, None)
    message = str(caught.value)
    assert "2 studies" in message and "1.2.3.4.5.6" in message and t2w.series_uid in message
    mapped = choose_series(index, rules, MODALITIES, SETTINGS, dicom_phantom.series_uids)
    assert mapped.choices["t2w"].rule == "series_map"


def test_ambiguous_contrast_lists_candidates_and_series_map_resolves(
    dicom_index, dicom_phantom, rules
) -> None:
    flair = _series(dicom_index, dicom_phantom.series_uids["t2f"])
    twin_uid = generate_uid()
    twin = _with_headers(flair, lambda n, h: None, uid=twin_uid)
    index = StudyIndex((*dicom_index.series, twin))
    with pytest.raises(InputError) as caught:
        choose_series(index, rules, MODALITIES, SETTINGS, None)
    assert caught.value.status_code == 422
    assert "t2f is ambiguous" in str(caught.value)
    assert flair.series_uid in str(caught.value) and twin_uid in str(caught.value)
    resolved = choose_series(index, rules, MODALITIES, SETTINGS, {"t2f": twin_uid})
    assert resolved.choices["t2f"].series is twin
    with pytest.raises(InputError, match="not in the upload") as caught:
        choose_series(index, rules, MODALITIES, SETTINGS, {"t2f": "1.2.3"})
    assert caught.value.status_code == 422
    with pytest.raises(InputError, match="unknown contrast") as caught:
        choose_series(index, rules, MODALITIES, SETTINGS, {"dwi": twin_uid})
    assert caught.value.status_code == 400


def test_rule_conditions_follow_the_monai_format(dicom_index, dicom_phantom) -> None:
    t1c = _series(dicom_index, dicom_phantom.series_uids["t1c"])  # TR 2300, TE 2.3, 3D, axial
    assert condition_matches(t1c, "RepetitionTime", 2300)
    assert not condition_matches(t1c, "RepetitionTime", 2000)
    assert condition_matches(t1c, "RepetitionTime", [2000, ">"])
    assert not condition_matches(t1c, "RepetitionTime", [2300, "<"])
    assert condition_matches(t1c, "EchoTime", [0, 30])
    assert not condition_matches(t1c, "EchoTime", [60, 200])
    assert condition_matches(t1c, "SeriesDescription", "t1 mprage ax +c")  # case-insensitive
    assert condition_matches(t1c, "SeriesDescription", "MPRAGE")  # re.search
    assert condition_matches(t1c, "SeriesDescription", "!flair")
    assert condition_matches(t1c, "ImageType", ["ORIGINAL", "!SECONDARY"])
    assert not condition_matches(t1c, "ImageType", ["PRIMARY", "!ORIGINAL"])
    assert condition_matches(t1c, "ImageOrientationPatient", "Axial")
    assert not condition_matches(t1c, "ImageOrientationPatient", "Sagittal")
    assert condition_matches(t1c, "InversionTime", "!.+") is False
    assert condition_matches(t1c, "ContrastBolusAgent", ".+")
    assert not condition_matches(t1c, "ContrastFlowRate", ".+")  # absent attribute
    assert condition_matches(t1c, "ContrastFlowRate", "!.+")


def test_a_bad_rules_file_is_refused_at_load(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text('{"selections": [{"name": "t1c", "conditions": {"EchoTme": [0, 30]}}]}')
    with pytest.raises(ValueError, match="'EchoTme' is not a DICOM keyword"):
        load_rules(bad)


# --- volumes -------------------------------------------------------------------------------


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    from dcm2niix import main as dcm2niix

    out.mkdir(parents=True, exist_ok=True)
    done = dcm2niix(
        ["-z", "n", "-b", "n", "-f", "out", "-o", str(out), str(folder)], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    return nib.load(out / "out.nii")


@pytest.mark.parametrize("role", ["t1c", "t2f", "t2w"])  # axial, oblique, descending coronal
def test_volume_matches_dcm2niix(dicom_phantom, dicom_index, role: str, tmp_path: Path) -> None:
    series = _series(dicom_index, dicom_phantom.series_uids[role])
    volume = build_volume(series, max_voxels=MAX_VOXELS)
    reference = _dcm2niix(dicom_phantom.series_folders[role], tmp_path)
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume.data, volume.affine))
    theirs = nib.as_closest_canonical(reference)
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours.affine - theirs.affine)) < 1e-3
    np.testing.assert_allclose(
        np.asarray(ours.dataobj),
        np.asarray(theirs.get_fdata(dtype=np.float32)),
        rtol=1e-5,
        atol=1e-5 * float(volume.data.max()),
    )


def test_philips_multiframe_geometry_matches_dcm2niix(tmp_path: Path) -> None:
    source = Path(nib.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    plain = tmp_path / "dicom" / "philips_mprage.dcm"
    plain.parent.mkdir()
    plain.write_bytes(gzip.decompress(source.read_bytes()))
    index = index_files([("philips_mprage.dcm", plain)])
    (series,) = index.series
    assert series.is_multiframe and series.slice_count == 176
    frames = series_frames(series)
    ours = stack_affine_ras(frames, check_stack(frames))
    theirs = nib.as_closest_canonical(_dcm2niix(plain.parent, tmp_path / "nifti"))
    _, canonical = reorient(np.zeros((256, 256, 176), np.float32), ours, "RAS")
    assert np.max(np.abs(canonical - theirs.affine)) < 1e-3
    # its pixels are zeroed: highdicom decodes them and the voxel check refuses the volume
    with pytest.raises(InputError, match="every voxel is zero") as caught:
        build_volume(series, max_voxels=MAX_VOXELS)
    assert caught.value.status_code == 422


def _replicated_series(name: str, tmp_path: Path, count: int = 8) -> IndexedSeries:
    """``count`` copies of a pydicom test file stacked 5 mm apart in one series."""
    source = pydicom.dcmread(get_testdata_file(name))
    series_uid = generate_uid()
    files = []
    for number in range(count):
        dataset = copy.deepcopy(source)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.FrameOfReferenceUID = "1.2.3.99"
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.ImagePositionPatient = [0, 0, 5.0 * number]
        dataset.PixelSpacing = [1, 1]
        path = tmp_path / f"{name}-{number}.dcm"
        dataset.save_as(path)
        files.append((path.name, path))
    (series,) = index_files(files).series
    return series


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_compressed_and_other_syntaxes_decode_like_the_plain_file(
    name: str, tmp_path: Path
) -> None:
    plain = build_volume(_replicated_series("MR_small.dcm", tmp_path), max_voxels=MAX_VOXELS)
    other = build_volume(_replicated_series(name, tmp_path), max_voxels=MAX_VOXELS)
    assert np.array_equal(plain.data, other.data)
    assert np.allclose(plain.affine, other.affine)


def test_bad_pydicom_files_are_refused_with_a_message(tmp_path: Path) -> None:
    truncated = _replicated_series("MR_truncated.dcm", tmp_path)
    with pytest.raises(InputError, match="pixel data cannot be decoded") as caught:
        build_volume(truncated, max_voxels=MAX_VOXELS)
    assert caught.value.status_code == 422 and truncated.series_uid in str(caught.value)

    (enhanced,) = index_files([("emri", Path(get_testdata_file("emri_small.dcm")))]).series
    with pytest.raises(InputError, match=r"no FrameOfReferenceUID|per-frame geometry") as caught:
        build_volume(enhanced, max_voxels=MAX_VOXELS)
    assert caught.value.status_code == 422

    undecodable = _replicated_series("MR_small_RLE.dcm", tmp_path)
    for instance in undecodable.instances:  # MPEG-2 video: pydicom has no decoder for it
        instance.header.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    with pytest.raises(InputError, match="MPEG2") as caught:
        build_volume(undecodable, max_voxels=MAX_VOXELS)
    assert caught.value.status_code == 422


def _shift(offsets: dict[int, tuple[float, float, float]]):
    def change(number: int, header: pydicom.Dataset) -> None:
        if number in offsets:
            position = np.asarray(header.ImagePositionPatient, dtype=float) + offsets[number]
            header.ImagePositionPatient = [float(v) for v in position]

    return change


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("missing", "missing slice"),
        ("irregular", "irregular slice spacing"),
        ("sheared", "sheared stack"),
        ("mixed", "mixed orientations"),
        ("duplicate", "share a position"),
    ],
)
def test_geometry_faults_are_refused_before_decoding(
    dicom_index, dicom_phantom, fault: str, words: str
) -> None:
    t1c = _series(dicom_index, dicom_phantom.series_uids["t1c"])
    if fault == "missing":
        ordered = sorted(t1c.instances, key=lambda i: int(i.header.InstanceNumber))
        broken = IndexedSeries(t1c.series_uid, t1c.study_uid, tuple(ordered[:40] + ordered[41:]))
    elif fault == "irregular":
        broken = _with_headers(t1c, _shift({n: (0.0, 0.0, 0.3) for n in range(50, 200)}))
    elif fault == "sheared":
        broken = _with_headers(t1c, lambda n, h: _shift({n: (0.1 * n, 0.0, 0.0)})(n, h))
    elif fault == "mixed":

        def tilt(number: int, header: pydicom.Dataset) -> None:
            if number == 10:
                header.ImageOrientationPatient = [1, 0, 0, 0, 0.9998477, 0.0174524]

        broken = _with_headers(t1c, tilt)
    else:
        broken = _with_headers(t1c, _shift({11: (0.0, 0.0, -1.0)}))
    with pytest.raises(InputError) as caught:
        build_volume(broken, max_voxels=MAX_VOXELS)
    assert caught.value.status_code == 422
    assert words in str(caught.value) and t1c.series_uid in str(caught.value)


# --- the study on the reference grid --------------------------------------------------------


@pytest.fixture(scope="module")
def geometry_study(dicom_index, rules):
    """The phantom study built on the t1c grid by DICOM geometry alone."""
    selection = choose_series(dicom_index, rules, MODALITIES, SETTINGS, None)
    return build_study(
        dicom_index,
        selection,
        MODALITIES,
        SETTINGS,
        max_voxels=MAX_VOXELS,
        skull_stripped=True,
    )


def test_study_on_the_reference_grid(dicom_phantom, geometry_study, phantom_case: Path) -> None:
    built = geometry_study
    study = built.study
    report = study.dicom_report
    assert report is not None
    assert report.reference_series_uid == dicom_phantom.series_uids["t1c"]
    assert {r: report.roles[r].resampling for r in MODALITIES} == {
        "t1n": "geometry",
        "t1c": "none",
        "t2w": "geometry",
        "t2f": "geometry",
    }
    # the t1c grid, its axes flipped/permuted to the model's LAS without interpolation
    written, expected_affine = reorient(
        np.zeros(dicom_phantom.reference_shape, np.float32), dicom_phantom.reference_affine, "LAS"
    )
    assert report.grid.orientation == "LAS" and study.shape == written.shape
    assert np.allclose(study.affine, expected_affine, atol=1e-4)
    # the reference and the coronal series sit on the source's voxel centres: exact up to the
    # int16 storage; the 2 mm and the oblique series are interpolated (twice: written, read)
    for channel, role in enumerate(MODALITIES):
        source = nib.load(modality_path(phantom_case, role))
        expected = resample_to_grid(
            np.asarray(source.dataobj, dtype=np.float32), source.affine, study.shape, study.affine
        )
        error = np.abs(study.images[channel] - expected) / float(expected.max())
        if role in ("t1c", "t2w"):
            assert float(error.max()) < 1e-4, role
        else:
            assert float(error.mean()) < 0.02, role
    assert study.supplied_text["dicom.SeriesDescription"] == "T1 MPRAGE AX +C"
    assert study.dicom_source is not None and len(study.dicom_source) == study.shape[2]
    assert all("7FE00010" not in header for header in study.dicom_source)
    assert all(value not in repr(study.supplied_text) for value in PATIENT.values())


def test_other_frame_of_reference_needs_registration(dicom_index, dicom_phantom, rules) -> None:
    t2w = _series(dicom_index, dicom_phantom.series_uids["t2w"])
    moved = _with_headers(t2w, lambda n, h: setattr(h, "FrameOfReferenceUID", "1.2.3.7"))
    index = StudyIndex(tuple(moved if s is t2w else s for s in dicom_index.series))
    selection = choose_series(index, rules, MODALITIES, SETTINGS, None)
    with pytest.raises(InputError) as caught:
        build_study(
            index, selection, MODALITIES, SETTINGS, max_voxels=MAX_VOXELS, skull_stripped=True
        )
    assert caught.value.status_code == 422
    assert t2w.series_uid in str(caught.value) and "rigid registration" in str(caught.value)


def test_brain_extraction_must_be_configured_unless_skull_stripped(dicom_phantom) -> None:
    with pytest.raises(InputError, match="skull_stripped") as caught:
        read_dicom_study(
            dicom_phantom.archive,
            [],
            MODALITIES,
            SETTINGS,
            max_voxels=MAX_VOXELS,
            skull_stripped=False,
        )
    assert caught.value.status_code == 422


def test_other_frame_of_reference_is_registered_rigidly(
    dicom_index, dicom_phantom, rules, geometry_study
) -> None:
    from cerebrascan.imaging.coregistration import register_rigid

    # the same coronal T2 declared in another frame of reference: registration must find
    # (about) the identity that geometry alone would have used
    t2w = _series(dicom_index, dicom_phantom.series_uids["t2w"])
    moved = _with_headers(t2w, lambda n, h: setattr(h, "FrameOfReferenceUID", "1.2.3.7"))
    index = StudyIndex(tuple(moved if s is t2w else s for s in dicom_index.series))
    selection = choose_series(index, rules, MODALITIES, SETTINGS, None)
    registered = build_study(
        index,
        selection,
        MODALITIES,
        SETTINGS,
        max_voxels=MAX_VOXELS,
        skull_stripped=True,
        register=register_rigid,
    ).study
    role = registered.dicom_report.roles["t2w"]
    assert role.resampling == "rigid" and role.registration_residual_mm is not None
    assert role.registration_residual_mm < 1.0
    by_geometry = geometry_study.study
    channel = MODALITIES.index("t2w")
    a, b = registered.images[channel], by_geometry.images[channel]
    brain = b > 0
    assert np.corrcoef(a[brain], b[brain])[0, 1] > 0.98


def test_whole_head_study_is_brain_extracted_and_segmented(
    phantom_case: Path, tmp_path_factory: pytest.TempPathFactory, rules, registered_default_model
) -> None:
    from cerebrascan.brain_extraction.extractor import BrainExtractor
    from cerebrascan.brain_extraction.settings import BrainExtractionSettings
    from cerebrascan.imaging.regions import volumes_ml
    from cerebrascan.registry import resolve_model
    from cerebrascan.segmentation import segment_study
    from cerebrascan.settings import Settings
    from cerebrascan.testing.dicom_phantoms import write_dicom_study
    from runners.factory import build_runner

    # the phantom put back into the SRI24 head (skull, scalp): the true brain mask is known
    folder = tmp_path_factory.mktemp("whole-head")
    phantom = write_dicom_study(phantom_case, folder, seed=61, whole_head=True)
    index = index_files((p.name, p) for p in phantom.files)
    extractor = BrainExtractor.from_settings(BrainExtractionSettings())
    masks: list[np.ndarray] = []

    def strip_skull(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        masks.append(extractor.mask(data, affine))
        return masks[-1]

    selection = choose_series(index, rules, MODALITIES, SETTINGS, None)
    study = build_study(
        index,
        selection,
        MODALITIES,
        SETTINGS,
        max_voxels=MAX_VOXELS,
        skull_stripped=False,
        strip_skull=strip_skull,
    ).study
    (mask,) = masks
    summary = study.dicom_report.brain_mask
    assert summary.applied and summary.volume_ml == pytest.approx(mask.sum() / 1000, rel=1e-3)
    assert not study.images[:, ~mask].any()  # every contrast masked
    truth = phantom.brain_mask_on(study.shape, study.affine)
    dice = 2 * np.sum(mask & truth) / (mask.sum() + truth.sum())
    assert dice >= 0.95, dice
    # and the tumour is measured as on the skull-stripped study (target: WT within 7 %)
    settings = Settings()
    model = resolve_model(settings)
    runner = build_runner(model.folder, model.spec, settings.runner, settings.engine_cache_dir)
    labels = segment_study(study, runner, mirror_tta=False).labels
    wt = volumes_ml(labels, study.spacing)["WT"]
    assert abs(wt - phantom.truth_volumes_ml["WT"]) / phantom.truth_volumes_ml["WT"] < 0.07
