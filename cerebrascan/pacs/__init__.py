"""PACS integration: a DICOM receiver (``cerebrascan dicom-listen``) and senders of a study's
DICOM outputs to a configured DICOMweb or DIMSE target (docs/dicom.md, "PACS")."""
