"""The report as a DICOM Encapsulated PDF in the study of its source series. No I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import highdicom as hd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from cerebrascan.dicom_out.seg import (
    MANUFACTURER,
    REQUIRED_EMPTY,
    RESEARCH_USE,
    Algorithm,
    carry_deidentification,
)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# the patient and study module, copied from the source so the PACS files it with the study
COPIED = (*REQUIRED_EMPTY, "StudyInstanceUID")


def build_encapsulated_pdf(pdf: bytes, sources: Sequence[Dataset], algorithm: Algorithm) -> Dataset:
    """``pdf`` (the rendered report) as an Encapsulated PDF instance of the source's study.

    Raises:
        ValueError: ``pdf`` is not a PDF document.
    """
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("the report is not a PDF document")
    source = sources[0]
    dataset = Dataset()
    for keyword in COPIED:
        setattr(dataset, keyword, getattr(source, keyword, ""))
    now = datetime.now(UTC)
    sop_instance_uid = hd.UID()
    dataset.SOPClassUID = ENCAPSULATED_PDF
    dataset.SOPInstanceUID = sop_instance_uid
    dataset.Modality = "DOC"
    dataset.SeriesInstanceUID = hd.UID()
    dataset.SeriesNumber = 9903
    dataset.InstanceNumber = 1
    dataset.SeriesDescription = f"CerebraScan report ({RESEARCH_USE})"
    dataset.DocumentTitle = f"CerebraScan brain tumour report ({RESEARCH_USE})"
    dataset.ConversionType = "WSD"
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = f"{algorithm.name} v{algorithm.version}"
    dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.ContentTime = now.strftime("%H%M%S")
    dataset.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    dataset.BurnedInAnnotation = "YES"  # the report names the patient's study, as printed
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.ConceptNameCodeSequence = []
    # the value must have an even length: pad with a NUL, as the standard allows
    dataset.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    dataset.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    return carry_deidentification(dataset, source)
