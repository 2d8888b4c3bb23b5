"""DICOM outputs of a DICOM-origin study for the PACS: SEG, TID 1500 SR, Encapsulated PDF."""
