"""Artefact folder of analysed studies: ``<studies_dir>/<study_id>/`` holding the label map, the
JSON result and the analyzers' NIfTI artefacts (``<name>.nii.gz``).

Writes go to a temporary name first and are renamed into place, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cerebrascan.errors import InputError, StorageFullError
from cerebrascan.inputs.case_folder import load_nifti_image, write_labels
from schemas.analyzers import ARTEFACT_NAME_PATTERN

STUDY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
SEGMENTATION_FILE = "segmentation.nii.gz"
RESULT_FILE = "result.json"
DICOM_SOURCE_FILE = "dicom_source.json"
"""The reference series' headers of a DICOM-origin study (DICOM JSON, no pixels)."""
REGISTRATION_IMAGE_NAME = "registration_reference"
"""The image a later visit registers to (saved only for studies with a patient id)."""
DISPLAY_IMAGE_PREFIX = "display_"
"""Display copies of the input contrasts (``views.display_modalities``): ``display_<contrast>``."""
DISPLAY_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
VIEWS_CACHE_FOLDER = "views"
"""Sub-folder of a study's folder caching its rendered meshes and videos."""
RESERVED_ARTEFACT_NAMES = frozenset(
    {"segmentation", REGISTRATION_IMAGE_NAME}
    | {f"{DISPLAY_IMAGE_PREFIX}{contrast}" for contrast in DISPLAY_CONTRASTS}
)
"""Artefact names an analyzer may not use (the label map is served at its own route)."""
NIFTI_DESCRIPTION_BYTES = 80
WRITING_MARKER_PREFIX = ".writing-"
"""A study folder holding ``.writing-<host>-<pid>`` is being written by that process."""
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""OSError numbers meaning the data folder has no room: disk full, quota, file size limit."""

logger = logging.getLogger(__name__)


def writing_marker_name(pid: int | None = None) -> str:
    """The writing marker of process ``pid`` (default: this one) on this host."""
    return f"{WRITING_MARKER_PREFIX}{socket.gethostname()}-{os.getpid() if pid is None else pid}"


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a full disk, quota or size limit:
    an OSError with such an errno, or a database's own "disk is full" error (SQLite's
    SQLITE_FULL, PostgreSQL's SQLSTATE 53100)."""
    for seen in _chain(exc):
        if isinstance(seen, OSError) and seen.errno in STORAGE_FULL_ERRNOS:
            return True
        text = str(seen)
        if "database or disk is full" in text or getattr(seen, "sqlstate", None) == "53100":
            return True
    return False


def storage_full_error(study_id: str, exc: BaseException) -> StorageFullError:
    """The 507 error for a study whose files did not fit (the OSError's text names why)."""
    reason = next(
        (
            e.strerror or str(e)
            for e in _chain(exc)
            if isinstance(e, OSError) and e.errno in STORAGE_FULL_ERRNOS
        ),
        str(exc),
    )
    return StorageFullError(
        f"study {study_id} could not be stored: the data folder has no room ({reason}); "
        "nothing of it was kept; retry once space is freed"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from or during, each once."""
    current: BaseException | None = exc
    visited: set[int] = set()
    while current is not None and id(current) not in visited:
        visited.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class StudyArtefacts:
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
        with _removed_on_error(staging):
            write_labels(labels, affine, staging)
            os.replace(staging, folder / SEGMENTATION_FILE)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".json") as handle:
            staged_result = Path(handle.name)
            with _removed_on_error(staged_result):
                handle.write(result_json)
                handle.flush()
        with _removed_on_error(staged_result):
            os.replace(staged_result, folder / RESULT_FILE)

    def begin_write(self, study_id: str) -> Path:
        """Create a study's folder marked as being written by this process (until
        :meth:`end_write`): a folder left marked by a process that died is an interrupted
        write, which :func:`sweep_interrupted_writes` removes at the next start.

        Raises:
            InputError: 400 if the id is not 32 lowercase hex characters.
        """
        folder = self.folder(study_id)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / writing_marker_name()
        marker.touch()
        return marker

    def end_write(self, study_id: str) -> None:
        """The study's files and record are complete: drop this process's writing marker."""
        (self.folder(study_id) / writing_marker_name()).unlink(missing_ok=True)

    def delete(self, study_id: str) -> bool:
        """Remove a study's folder (label map, result, artefacts, display copies, views).

        The folder is first renamed out of the way, so a reader finds either all of it or
        nothing; a rename left by an interrupted delete is removed by the next one.

        Returns:
            Whether there was a folder.

        Raises:
            InputError: 400 if the id is not 32 lowercase hex characters.
        """
        folder = self.folder(study_id)
        doomed = self.root / f".{study_id}.deleting"
        if doomed.exists():
            shutil.rmtree(doomed)
        try:
            os.replace(folder, doomed)
        except FileNotFoundError:
            return False
        shutil.rmtree(doomed)
        return True

    def save_artefact(
        self,
        study_id: str,
        name: str,
        array: npt.NDArray[Any],
        affine: npt.NDArray[np.float64],
        *,
        description: str = "",
    ) -> Path:
        """Write ``array`` as ``<name>.nii.gz`` in the study's folder, atomically.

        bool is stored as uint8, float16 and float64 as float32, int64 as int32 (NIfTI has no
        float16); ``description`` goes into the header's ``descrip`` (cut to 80 bytes).

        Raises:
            ValueError: the name does not match ``ARTEFACT_NAME_PATTERN`` or is reserved.
        """
        path = self.folder(study_id) / artefact_file_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = description.encode("utf-8", errors="replace")[: NIFTI_DESCRIPTION_BYTES - 1]
        _write_nifti(path, _storable(array), affine, description=encoded)
        return path

    def save_registration_image(
        self, study_id: str, image: npt.NDArray[Any], affine: npt.NDArray[np.float64]
    ) -> Path:
        """Save the image later visits register to, as uint8 (``registration_reference``).

        Intensities are scaled so that the 99.5th percentile of the head is 255; every head
        voxel (``image > 0``) stays >= 1, so the head mask survives the scaling.
        """
        data = np.asarray(image, dtype=np.float32)
        head = data > 0
        top = float(np.percentile(data[head], 99.5)) if head.any() else 1.0
        scaled = np.clip(np.rint(data / max(top, 1e-12) * 255.0), 0, 255).astype(np.uint8)
        scaled[head & (scaled == 0)] = 1
        path = self.folder(study_id) / artefact_file_name_unchecked(REGISTRATION_IMAGE_NAME)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_nifti(path, scaled, affine)
        return path

    def save_display_image(
        self,
        study_id: str,
        contrast: str,
        image: npt.NDArray[np.uint8],
        affine: npt.NDArray[np.float64],
    ) -> Path:
        """Save a display copy (uint8, already windowed) of ``contrast`` as
        ``display_<contrast>.nii.gz``: the grid and affine only, no header text.

        Raises:
            ValueError: an unknown contrast or an image that is not uint8.
        """
        if contrast not in DISPLAY_CONTRASTS:
            raise ValueError(f"display contrast {contrast!r} is not one of {DISPLAY_CONTRASTS}")
        if image.dtype != np.uint8:
            raise ValueError(f"a display copy is uint8, got {image.dtype}")
        path = self.folder(study_id) / f"{DISPLAY_IMAGE_PREFIX}{contrast}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_nifti(path, image, affine)
        return path

    def display_image_path(self, study_id: str, contrast: str) -> Path | None:
        """Path of a study's display copy of ``contrast``, or None if none was kept."""
        if contrast not in DISPLAY_CONTRASTS:
            return None
        path = self.folder(study_id) / f"{DISPLAY_IMAGE_PREFIX}{contrast}.nii.gz"
        return path if path.is_file() else None

    def load_display_image(
        self, study_id: str, contrast: str
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]] | None:
        """A study's display copy of ``contrast`` and its affine, or None if none was kept."""
        path = self.display_image_path(study_id, contrast)
        if path is None:
            return None
        nifti = load_nifti_image(path)
        return np.asarray(nifti.dataobj, dtype=np.uint8), np.asarray(nifti.affine, dtype=np.float64)

    def views_cache(self, study_id: str) -> Path:
        """Folder caching a study's rendered views (created on demand).

        Raises:
            InputError: 400 for a malformed id, 404 if the study is absent.
        """
        self.artefact(study_id, SEGMENTATION_FILE)
        folder = self.folder(study_id) / VIEWS_CACHE_FOLDER
        folder.mkdir(exist_ok=True)
        return folder

    def load_labels(self, study_id: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
        """A stored study's label map and affine.

        Raises:
            InputError: 404 if the study or its segmentation is absent.
        """
        nifti = load_nifti_image(self.artefact(study_id, SEGMENTATION_FILE))
        labels = np.asarray(nifti.dataobj, dtype=np.uint8)
        return labels, np.asarray(nifti.affine, dtype=np.float64)

    def load_registration_image(
        self, study_id: str
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]] | None:
        """A stored study's registration image and affine, or None if it has none."""
        path = self.folder(study_id) / artefact_file_name_unchecked(REGISTRATION_IMAGE_NAME)
        if not path.is_file():
            return None
        nifti = load_nifti_image(path)
        return np.asarray(nifti.dataobj, dtype=np.float32), np.asarray(
            nifti.affine, dtype=np.float64
        )

    def named_artefact(self, study_id: str, name: str) -> Path:
        """Path of an analyzer artefact ``<name>.nii.gz``.

        Raises:
            InputError: 400 if the name is malformed, 403 if it is reserved
                (:data:`RESERVED_ARTEFACT_NAMES`), 404 if the study or artefact is absent.
        """
        if not ARTEFACT_NAME_PATTERN.match(name):
            raise InputError(
                f"artefact name {name[:80]!r} must match {ARTEFACT_NAME_PATTERN.pattern}",
                status_code=400,
            )
        if name in RESERVED_ARTEFACT_NAMES:
            # the store's own files: the registration image stays inside, the label map and
            # display copies have their own routes
            raise InputError(
                f"artefact name {name!r} is reserved for the store's own files "
                f"({', '.join(sorted(RESERVED_ARTEFACT_NAMES))}) and is not served here",
                status_code=403,
            )
        return self.artefact(study_id, f"{name}.nii.gz")

    def artefact(self, study_id: str, name: str) -> Path:
        """Path of a stored artefact.

        Raises:
            InputError: 404 if the study or artefact does not exist.
        """
        path = self.folder(study_id) / name
        if not path.is_file():
            raise InputError(f"no {name} for study {study_id}", status_code=404)
        return path


def artefact_file_name(name: str) -> str:
    """File name of an analyzer artefact.

    Raises:
        ValueError: the name does not match ``ARTEFACT_NAME_PATTERN`` or is reserved.
    """
    if not ARTEFACT_NAME_PATTERN.match(name):
        raise ValueError(f"artefact name {name!r} must match {ARTEFACT_NAME_PATTERN.pattern}")
    if name in RESERVED_ARTEFACT_NAMES:
        raise ValueError(f"artefact name {name!r} is reserved")
    return f"{name}.nii.gz"


def artefact_file_name_unchecked(name: str) -> str:
    """File name of a store-owned (reserved) artefact such as ``registration_reference``."""
    return f"{name}.nii.gz"


def _write_nifti(
    path: Path,
    data: npt.NDArray[Any],
    affine: npt.NDArray[np.float64],
    *,
    description: bytes = b"",
) -> None:
    """Write ``data`` as NIfTI-1 in its own dtype, under a staging name renamed into place."""
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.set_data_dtype(data.dtype)
    image.header["descrip"] = description
    staging = path.with_name(f".{path.name}.partial.nii.gz")
    with _removed_on_error(staging):
        nib.save(image, str(staging))
        os.replace(staging, path)


@contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    """Remove ``path`` (a staging file) when the block fails, so a failed write (a full disk)
    leaves no half-written file behind."""
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _storable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    data = np.asarray(array)
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype in (np.float16, np.float64):  # NIfTI has no float16
        return data.astype(np.float32)
    if data.dtype == np.int64:
        return data.astype(np.int32)
    if data.dtype == np.uint64:
        return data.astype(np.uint32)
    return data


class StudyArtefactSink:
    """Writes one study's analyzer artefacts into the :class:`StudyArtefacts`.

    Implements :class:`plugins.analyzer.ArtefactSink`; URLs are
    ``/studies/<study_id>/artefacts/<name>``.

    Args:
        store: the study store.
        study_id: the study being analysed.
        affine: the input grid's voxel-to-RAS affine.
        shape: the input grid's spatial shape; every artefact must start with it.
    """

    def __init__(
        self,
        store: StudyArtefacts,
        study_id: str,
        affine: npt.NDArray[np.float64],
        shape: tuple[int, int, int],
    ) -> None:
        self.store = store
        self.study_id = study_id
        self.affine = affine
        self.shape = shape

    def write_nifti(self, name: str, array: npt.NDArray[Any], *, description: str) -> str:
        """Save ``array`` as ``<name>.nii.gz``; return its URL.

        Raises:
            ValueError: a bad or reserved name, or an array that is not on the study's grid.
        """
        artefact_file_name(name)
        data = np.asarray(array)
        if data.ndim not in (3, 4) or tuple(data.shape[:3]) != tuple(self.shape):
            raise ValueError(
                f"artefact {name!r} has shape {data.shape}; it must be {self.shape} or "
                f"{(*self.shape, 'n')} (the study's grid)"
            )
        if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
            raise ValueError(f"artefact {name!r} has dtype {data.dtype}; it must be numeric")
        self.store.save_artefact(self.study_id, name, data, self.affine, description=description)
        return f"/studies/{self.study_id}/artefacts/{name}"


def sweep_interrupted_writes(
    artefacts: StudyArtefacts, is_recorded: Callable[[str], bool]
) -> list[str]:
    """Remove what interrupted writes left in the studies folder (run at start-up).

    A study folder still marked as being written (:meth:`StudyArtefacts.begin_write`) by a
    process of this host that no longer runs (killed mid-write) is removed when the study has no
    record: files without a record are never served. With a record the write had finished, so
    only the stale marker and staging files go. Markers of live processes (another server on
    the same data folder) and of other hosts are left alone.

    Args:
        artefacts: the study files.
        is_recorded: whether the store holds a record of a study id.

    Returns:
        The ids of the study folders removed.
    """
    removed: list[str] = []
    if not artefacts.root.is_dir():
        return removed
    host_prefix = f"{WRITING_MARKER_PREFIX}{socket.gethostname()}-"
    for marker in sorted(artefacts.root.glob(f"*/{WRITING_MARKER_PREFIX}*")):
        folder = marker.parent
        if not STUDY_ID_PATTERN.match(folder.name) or not marker.name.startswith(host_prefix):
            continue
        pid_text = marker.name[len(host_prefix) :]
        if not pid_text.isdigit() or _process_runs(int(pid_text)):
            continue
        if is_recorded(folder.name):
            for staging in folder.glob(".*.partial.nii.gz"):
                staging.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            continue
        logger.warning(
            "removing study %s: its write was interrupted (process %s is gone) and it has no "
            "record",
            folder.name,
            pid_text,
        )
        artefacts.delete(folder.name)
        removed.append(folder.name)
    return removed


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
