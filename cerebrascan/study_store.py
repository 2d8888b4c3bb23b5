"""Artefact folder of analysed studies: ``<studies_dir>/<study_id>/`` holding the label map and
the JSON result.

Writes go to a temporary name first and are renamed into place, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cerebrascan.errors import InputError
from cerebrascan.imaging.case_folder import write_labels

STUDY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
SEGMENTATION_FILE = "segmentation.nii.gz"
RESULT_FILE = "result.json"


class StudyStore:
    """Stores and finds per-study artefacts under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, study_id: str) -> Path:
        """Folder of a study; the id is validated so it can never escape the root.

        Raises:
            InputError: 400 if the id is not 32 lowercase hex characters.
        """
        if not STUDY_ID_PATTERN.match(study_id):
            raise InputError(
                f"study id {study_id[:64]!r} is not 32 lowercase hex characters", status_code=400
            )
        return self.root / study_id

    def save(
        self,
        study_id: str,
        labels: npt.NDArray[np.uint8],
        affine: npt.NDArray[np.float64],
        result_json: str,
    ) -> None:
        """Write the label map and the JSON result of a study atomically."""
        folder = self.folder(study_id)
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{SEGMENTATION_FILE}.partial.nii.gz"
        write_labels(labels, affine, staging)
        os.replace(staging, folder / SEGMENTATION_FILE)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".json") as handle:
            handle.write(result_json)
        os.replace(handle.name, folder / RESULT_FILE)

    def artefact(self, study_id: str, name: str) -> Path:
        """Path of a stored artefact.

        Raises:
            InputError: 404 if the study or artefact does not exist.
        """
        path = self.folder(study_id) / name
        if not path.is_file():
            raise InputError(f"no {name} for study {study_id}", status_code=404)
        return path
