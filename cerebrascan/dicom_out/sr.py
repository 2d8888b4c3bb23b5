"""The study's measurements as a Comprehensive 3D SR, TID 1500 (highdicom), referencing its SEG.

One volumetric measurement group per SEG segment (NETC, SNFH, ET: volume in mL, referencing
the segment and the source series), and one group each for the composite regions TC and WT
(volume; WT also its maximum 3D diameter), which are unions of segments rather than segments.
No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cerebrascan.dicom_out.seg import (
    MANUFACTURER,
    RESEARCH_USE,
    Algorithm,
    carry_deidentification,
)

VOLUME = Code("118565006", "SCT", "Volume")
MAX_DIAMETER = Code("103339001", "SCT", "Long axis")
"""The largest distance across the whole tumour (SNOMED "Long axis", as TID 1410 uses it)."""
MILLILITRE = Code("ml", "UCUM", "milliliter")
MILLIMETRE = Code("mm", "UCUM", "millimeter")
FINDING = Code("108369006", "SCT", "Neoplasm")
MR_BRAIN = Code("24590-2", "LN", "MR Brain")
COMPOSITE_REGIONS = {
    "TC": "tumour core = NETC + ET",
    "WT": "whole tumour = NETC + SNFH + ET",
}


def build_measurement_report(
    segmentation: Dataset,
    sources: Sequence[Dataset],
    volumes_ml: Mapping[str, float],
    algorithm: Algorithm,
    *,
    max_diameter_mm: float | None = None,
) -> Dataset:
    """A TID 1500 measurement report of the study's volumes.

    Args:
        segmentation: the study's SEG (:func:`~cerebrascan.dicom_out.seg.build_segmentation`).
        sources: the reference series' instances the SEG was made on.
        volumes_ml: ``NETC``, ``SNFH``, ``ET``, ``TC``, ``WT`` in mL (the answer's
            ``volumes_ml``).
        algorithm: the model, as the observing device and the algorithm of each measurement.
        max_diameter_mm: the whole tumour's largest diameter, when measured.
    """
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, parameters=[f"alias={algorithm.alias}"]
    )
    source_series = hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID))
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for segment in segmentation.SegmentSequence:
        name = str(segment.TrackingID)
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=str(segment.TrackingUID), identifier=name
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(segmentation.SOPClassUID),
                    sop_instance_uid=str(segmentation.SOPInstanceUID),
                    segment_number=int(segment.SegmentNumber),
                    source_series=source_series,
                ),
                finding_type=FINDING,
                measurements=[_measurement(VOLUME, volumes_ml[name], MILLILITRE, algorithm_id)],
            )
        )
    for name, description in COMPOSITE_REGIONS.items():
        measurements = [_measurement(VOLUME, volumes_ml[name], MILLILITRE, algorithm_id)]
        if name == "WT" and max_diameter_mm is not None:
            measurements.append(
                _measurement(MAX_DIAMETER, max_diameter_mm, MILLIMETRE, algorithm_id)
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{name} ({description})"
                ),
                finding_type=FINDING,
                measurements=measurements,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=f"{algorithm.name} {algorithm.version}",
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=MR_BRAIN,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, segmentation],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=9902,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"CerebraScan tumour volumes ({RESEARCH_USE})",
    )
    return carry_deidentification(sr, sources[0])


def _measurement(
    name: Code, value: float, unit: Code, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm_id)
