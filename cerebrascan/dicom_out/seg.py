"""A study's label map as a DICOM Segmentation (highdicom), on its reference series' grid.

BINARY by default (many PACS refuse LABELMAP, e.g. dcm4chee's default configuration);
LABELMAP on request. Segments NETC / SNFH / ET with SNOMED CT codes and the report palette as
recommended display colours; labels absent from the study are left out (viewers hang on empty
segments) and the rest are numbered from 1, as the standard requires. No I/O here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cerebrascan.views.palette import LABELS

SegType = Literal["binary", "labelmap"]
SEG_TYPES: tuple[SegType, ...] = ("binary", "labelmap")
RESEARCH_USE = "research use only"
MANUFACTURER = "CerebraScan"

CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")
"""Segmented property category of every tumour sub-region."""
PROPERTY_TYPES: dict[int, Code] = {
    1: Code("6574001", "SCT", "Necrosis"),  # NETC: the closest SNOMED concept (approximate)
    2: Code("79654002", "SCT", "Edema"),  # SNFH
    3: Code("108369006", "SCT", "Neoplasm"),  # ET: SNOMED has no "enhancing tumour"
}
"""Segmented property type per BraTS label value."""
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# header attributes highdicom copies from the source and refuses to find missing (empty is fine)
REQUIRED_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyTime",
)


DEIDENTIFICATION_KEYWORDS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)
"""What marks a de-identified source (``cerebrascan.inputs.dicom.deid``); an output made from
it says so too."""


def carry_deidentification(output: Dataset, source: Dataset) -> Dataset:
    """``output`` marked de-identified as ``source`` is (nothing when the source is not)."""
    if str(source.get("PatientIdentityRemoved", "")).upper() == "YES":
        for keyword in DEIDENTIFICATION_KEYWORDS:
            if keyword in source:
                setattr(output, keyword, copy.deepcopy(source[keyword].value))
    return output


@dataclass(frozen=True)
class Algorithm:
    """The model that made the segmentation: the algorithm identification of SEG and SR."""

    name: str
    version: str
    alias: str

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.version,
            parameters={"registry_alias": self.alias},
        )


def source_datasets(headers: Sequence[Mapping[str, Any]]) -> list[Dataset]:
    """The reference series' instances from their stored DICOM JSON headers (no pixels), with
    the attributes highdicom needs present (empty when the scanner left them out)."""
    datasets = []
    for header in headers:
        dataset = Dataset.from_json(dict(header))
        for keyword in REQUIRED_EMPTY:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
        datasets.append(dataset)
    return datasets


def source_geometry(sources: Sequence[Dataset]) -> hd.VolumeGeometry:
    """The grid of a single-frame series, its slices in stacking order.

    Raises:
        ValueError: fewer than two slices, or slices of another orientation.
    """
    if len(sources) < 2:
        raise ValueError(f"a reference series of {len(sources)} slice(s) has no volume geometry")
    orientation = np.asarray(sources[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(
        sources, key=lambda s: float(np.dot(normal, np.asarray(s.ImagePositionPatient, float)))
    )
    first = np.asarray(ordered[0].ImagePositionPatient, dtype=np.float64)
    last = np.asarray(ordered[-1].ImagePositionPatient, dtype=np.float64)
    spacing = float(np.dot(normal, last - first)) / (len(ordered) - 1)

    def geometry(position: npt.NDArray[np.float64]) -> hd.VolumeGeometry:
        return hd.VolumeGeometry.from_attributes(
            image_position=[float(v) for v in position],
            image_orientation=[float(v) for v in orientation],
            rows=int(ordered[0].Rows),
            columns=int(ordered[0].Columns),
            pixel_spacing=[float(v) for v in ordered[0].PixelSpacing],
            spacing_between_slices=spacing,
            number_of_frames=len(ordered),
            coordinate_system="PATIENT",
            frame_of_reference_uid=str(ordered[0].FrameOfReferenceUID),
        )

    # highdicom orders slices by its handedness convention: start from the slice it puts first
    found = geometry(first)
    if float(np.dot(found.affine[:3, 0], normal)) < 0:
        found = geometry(last)
    return found


def build_segmentation(
    labels: npt.NDArray[np.uint8],
    affine_ras: npt.NDArray[np.float64],
    sources: Sequence[Dataset],
    algorithm: Algorithm,
    *,
    seg_type: SegType = "binary",
) -> Dataset:
    """The DICOM SEG of ``labels`` (BraTS values on the reference series' grid).

    Args:
        labels: NETC=1 / SNFH=2 / ET=3, any axis order; ``affine_ras`` maps its voxels to
            scanner RAS millimetres.
        affine_ras: the label map's voxel-to-RAS affine.
        sources: the reference series' instances (headers, :func:`source_datasets`).
        algorithm: the model, as the algorithm identification.
        seg_type: ``binary`` or ``labelmap``.

    Raises:
        ValueError: no tumour label at all (a SEG needs a segment), or a label map not on the
            reference series' grid.
    """
    present = [
        entry for entry in LABELS if entry.label is not None and (labels == entry.label).any()
    ]
    if not present:
        raise ValueError("the segmentation holds no tumour label: there is no segment to encode")
    numbered = np.zeros(labels.shape, dtype=np.uint8)
    descriptions = []
    identification = algorithm.identification()
    for number, entry in enumerate(present, start=1):
        assert entry.label is not None
        numbered[labels == entry.label] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"{entry.name} ({entry.description})",
                segmented_property_category=CATEGORY,
                segmented_property_type=PROPERTY_TYPES[entry.label],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
                tracking_uid=hd.UID(),
                tracking_id=entry.name,
                display_color=hd.color.CIELabColor.from_rgb(*entry.rgb),
            )
        )
    geometry = source_geometry(sources)
    volume = hd.Volume(
        numbered,
        LPS_FROM_RAS @ np.asarray(affine_ras, dtype=np.float64),
        coordinate_system="PATIENT",
        frame_of_reference_uid=geometry.frame_of_reference_uid,
    )
    try:
        # the frames in the source's stacking order, so viewers overlay them slice by slice
        volume = volume.match_geometry(geometry)
    except RuntimeError as exc:
        raise ValueError(f"the label map is not on the reference series' grid: {exc}") from None
    segmentation = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=volume,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.LABELMAP
            if seg_type == "labelmap"
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{algorithm.name} v{algorithm.version}",
        software_versions=f"{algorithm.name} {algorithm.version} ({algorithm.alias})",
        device_serial_number="none",
        content_description=f"Brain tumour sub-regions, {RESEARCH_USE}",
        content_label="TUMOUR",
        # every frame, empty ones too: a SEG with gaps between lesions is no regular volume
        # for readers (highdicom's get_volume refuses it) and moves the stored origin
        omit_empty_frames=False,
        series_description=f"CerebraScan tumour SEG ({RESEARCH_USE})",
    )
    return carry_deidentification(segmentation, sources[0])
