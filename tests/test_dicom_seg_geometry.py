"""The DICOM SEG builder on axial, oblique and descending-order reference series (no server).

A small series is written as a scanner would (``write_series``), a label map is drawn on its
grid, in the series' own axis order or permuted and flipped, and the SEG read back with
highdicom must hold the same voxels in the same world positions.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cerebrascan.dicom_out.seg import Algorithm, build_segmentation, source_datasets
from cerebrascan.testing.dicom_phantoms import CORONAL, SeriesPlan, oblique_axial, write_series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (20, 18, 24)  # columns, rows, slices
SPACING = (0.9, 1.1, 1.5)  # between columns, between rows, between slices
PLANS = {
    "axial": SeriesPlan("t1c", "T1 AX", 1, spacing_mm=SPACING),
    "oblique": SeriesPlan(
        "t1c", "T1 AX OBL", 2, orientation=oblique_axial(17.0), spacing_mm=SPACING
    ),
    "descending_coronal": SeriesPlan(
        "t1c", "T1 COR", 3, orientation=CORONAL, descending=True, spacing_mm=SPACING
    ),
}


def _affine_lps(plan: SeriesPlan) -> np.ndarray:
    row, column = (np.asarray(v, dtype=np.float64) for v in plan.orientation)
    normal = np.cross(row, column)
    if plan.descending:
        normal = -normal
    affine = np.eye(4)
    affine[:3, 0] = row * SPACING[0]
    affine[:3, 1] = column * SPACING[1]
    affine[:3, 2] = normal * SPACING[2]
    affine[:3, 3] = (-12.0, 30.0, -7.0)
    return affine


def _world_stats(labels: np.ndarray, affine_ras: np.ndarray) -> dict[int, tuple[int, np.ndarray]]:
    stats = {}
    for value in (1, 2, 3):
        indices = np.argwhere(labels == value)
        if len(indices):
            centroid = affine_ras[:3, :3] @ indices.mean(axis=0) + affine_ras[:3, 3]
            stats[value] = (len(indices), centroid)
    return stats


@pytest.fixture(scope="module", params=sorted(PLANS))
def reference_series(request, tmp_path_factory: pytest.TempPathFactory):
    plan = PLANS[request.param]
    affine_lps = _affine_lps(plan)
    volume = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    folder = tmp_path_factory.mktemp(request.param)
    files = write_series(
        volume,
        affine_lps,
        plan,
        folder,
        study_uid=hd.UID(),
        series_uid=hd.UID(),
        frame_uid=hd.UID(),
        rng=random.Random(5),
    )
    random.Random(1).shuffle(files)  # the order files arrive in says nothing
    headers = [pydicom.dcmread(path, stop_before_pixels=True).to_json_dict() for path in files]
    return source_datasets(headers), LPS_TO_RAS @ affine_lps


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:9, 3:7, 5:12] = 2  # SNFH
    labels[6:8, 4:6, 7:9] = 3  # ET
    labels[12:15, 10:16, 15:21] = 1  # NETC, a second lesion
    return labels


@pytest.mark.parametrize("layout", ["series", "permuted_flipped"])
def test_seg_read_back_holds_the_same_voxels_in_world_coordinates(
    reference_series, layout: str
) -> None:
    sources, affine_ras = reference_series
    labels = _labels()
    if layout == "permuted_flipped":  # the same grid as the pipeline may store it (e.g. LAS)
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, SHAPE[2] - 1
        labels = labels[:, :, ::-1]
        affine_ras = affine_ras @ flip
        permute = np.eye(4)[[2, 0, 1, 3]].T  # new axes (slice, column, row)
        labels = np.transpose(labels, (2, 0, 1))
        affine_ras = affine_ras @ permute
    expected = _world_stats(labels, affine_ras)
    seg = build_segmentation(labels, affine_ras, sources, Algorithm("unet", "3", "champion"))
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    read = hd.seg.segread(io.BytesIO(buffer.getvalue()))
    assert [int(s.SegmentNumber) for s in read.SegmentSequence] == [1, 2, 3]
    value_of = {"NETC": 1, "SNFH": 2, "ET": 3}
    number_to_value = {int(s.SegmentNumber): value_of[s.TrackingID] for s in read.SegmentSequence}
    volume = read.get_volume(combine_segments=True, relabel=True)
    found = _world_stats(
        np.vectorize(lambda n: number_to_value.get(int(n), 0))(np.asarray(volume.array)),
        LPS_TO_RAS @ volume.affine,
    )
    assert {v: count for v, (count, _) in found.items()} == {
        v: count for v, (count, _) in expected.items()
    }
    for value, (_, centroid) in found.items():
        np.testing.assert_allclose(centroid, expected[value][1], atol=0.01)


def test_a_label_map_off_the_reference_grid_is_refused(reference_series) -> None:
    sources, affine_ras = reference_series
    shifted = affine_ras.copy()
    shifted[:3, 3] += 0.4 * affine_ras[:3, 0]  # off by 0.4 voxel: no longer the same grid
    with pytest.raises(ValueError, match="not on the reference series' grid"):
        build_segmentation(_labels(), shifted, sources, Algorithm("unet", "3", "champion"))


def test_a_segmentation_without_tumour_is_refused(reference_series) -> None:
    sources, affine_ras = reference_series
    with pytest.raises(ValueError, match="no tumour label"):
        build_segmentation(np.zeros(SHAPE, np.uint8), affine_ras, sources, Algorithm("u", "1", "a"))


def test_missing_patient_attributes_are_filled_empty(reference_series, tmp_path: Path) -> None:
    sources, affine_ras = reference_series
    stripped = [s.copy() for s in sources]
    for dataset in stripped:
        del dataset.PatientBirthDate
        del dataset.AccessionNumber
    refilled = source_datasets([d.to_json_dict() for d in stripped])
    assert all(d.PatientBirthDate == "" and d.AccessionNumber == "" for d in refilled)
    seg = build_segmentation(_labels(), affine_ras, refilled, Algorithm("u", "1", "a"))
    assert seg.PatientBirthDate == ""
