"""``GET /studies/{id}/dicom/seg|sr|pdf`` of a DICOM-origin study, read back with highdicom.

The SEG must describe the same voxels as ``/segmentation`` in the scanner's world (counts per
label equal, centroids within 0.01 mm), whatever the reference series' slice order; the SR's
volumes equal the answer's; a NIfTI-origin study has no DICOM outputs (409).
"""

from __future__ import annotations

import gzip
import io

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from cerebrascan.views.palette import LABELS

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
NAMES = {entry.label: entry.name for entry in LABELS}
NAMES_BY_NAME = {entry.name: entry.label for entry in LABELS}


def _world_stats(labels: np.ndarray, affine_ras: np.ndarray) -> dict[int, tuple[int, np.ndarray]]:
    """Voxel count and RAS centroid (mm) of every label value present."""
    stats = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        indices = np.argwhere(labels == value)
        centroid = affine_ras[:3, :3] @ indices.mean(axis=0) + affine_ras[:3, 3]
        stats[int(value)] = (len(indices), centroid)
    return stats


@pytest.fixture(scope="module")
def served_labels(asgi_client, dicom_study) -> tuple[np.ndarray, np.ndarray]:
    response = asgi_client.get(f"/studies/{dicom_study['study_id']}/segmentation")
    assert response.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    return np.asarray(image.dataobj).astype(np.uint8), image.affine


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_seg_holds_the_served_segmentation_in_world_coordinates(
    asgi_client, dicom_study, dicom_phantom, served_labels, seg_type: str
) -> None:
    response = asgi_client.get(
        f"/studies/{dicom_study['study_id']}/dicom/seg", params={"type": seg_type}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(response.content))
    assert seg.SegmentationType == seg_type.upper()
    reference = pydicom.dcmread(
        next(dicom_phantom.series_folders["t1c"].iterdir()), stop_before_pixels=True
    )
    assert seg.FrameOfReferenceUID == reference.FrameOfReferenceUID
    assert seg.StudyInstanceUID == dicom_phantom.study_uid
    assert "research use" in seg.SeriesDescription
    assert (
        str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == dicom_phantom.series_uids["t1c"]
    )
    labels, affine = served_labels
    expected = _world_stats(labels, affine)
    # segments: the labels present, numbered from 1, each with its palette colour
    # (a LABELMAP SEG may also describe its background as a segment without a tracking id)
    segments = [s for s in seg.SegmentSequence if "TrackingID" in s]
    names = [str(s.TrackingID) for s in segments]
    assert names == [NAMES[value] for value in sorted(expected)]
    assert all("RecommendedDisplayCIELabValue" in s for s in segments)
    algorithm = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == dicom_study["model"]["name"]
    assert algorithm.AlgorithmVersion == dicom_study["model"]["version"]
    volume = seg.get_volume(combine_segments=True, relabel=True)
    read_back = _world_stats(np.asarray(volume.array), RAS_FROM_LPS @ volume.affine)
    numbers = {int(s.SegmentNumber): NAMES_BY_NAME[str(s.TrackingID)] for s in segments}
    assert {numbers[n]: count for n, (count, _) in read_back.items()} == {
        value: count for value, (count, _) in expected.items()
    }
    for number, (_, centroid) in read_back.items():
        np.testing.assert_allclose(centroid, expected[numbers[number]][1], atol=0.01)


def test_sr_volumes_equal_the_answer_and_reference_the_seg(asgi_client, dicom_study) -> None:
    study_id = dicom_study["study_id"]
    seg = pydicom.dcmread(io.BytesIO(asgi_client.get(f"/studies/{study_id}/dicom/seg").content))
    response = asgi_client.get(f"/studies/{study_id}/dicom/sr")
    assert response.status_code == 200, response.text
    sr = hd.sr.srread(io.BytesIO(response.content))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {
        seg.SOPInstanceUID
    }
    volumes = dicom_study["volumes_ml"]
    for group in groups:
        name = group.tracking_identifier.split(" ")[0] if group.tracking_identifier else ""
        (measurement,) = group.get_measurements()
        assert measurement.value == pytest.approx(volumes[name], abs=1e-3)
    others = sr.content.get_planar_roi_measurement_groups()  # none: the SR is volumetric
    assert others == []


def test_pdf_is_the_report_in_the_source_study(asgi_client, dicom_study, dicom_phantom) -> None:
    response = asgi_client.get(f"/studies/{dicom_study['study_id']}/dicom/pdf")
    assert response.status_code == 200, response.text
    document = pydicom.dcmread(io.BytesIO(response.content))
    assert document.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert document.StudyInstanceUID == dicom_phantom.study_uid
    assert bytes(document.EncapsulatedDocument).startswith(b"%PDF-")
    assert "research use" in document.DocumentTitle


def test_a_nifti_study_has_no_dicom_outputs(asgi_client, reported_study) -> None:
    for output in ("seg", "sr", "pdf"):
        response = asgi_client.get(f"/studies/{reported_study['study_id']}/dicom/{output}")
        assert response.status_code == 409, response.text
        assert "no DICOM source" in response.json()["error"]
    unknown = asgi_client.get(f"/studies/{'0' * 32}/dicom/seg")
    assert unknown.status_code == 404
    bad = asgi_client.get(f"/studies/{reported_study['study_id']}/dicom/seg?type=rgb")
    assert bad.status_code == 400 and "type" in bad.json()["error"]
