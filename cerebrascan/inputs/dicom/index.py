"""Index a study's files by their headers, read without pixel data (I/O).

Every file is parsed with ``stop_before_pixels``: a 2 GB study is indexed by reading a few
kilobytes per file, and pixels are decoded only for the series :mod:`.selection` chooses.
Files that are not DICOM, DICOMDIR files and non-image objects (SR, SEG, presentation states)
are skipped and counted; nothing identifying (names, ids, dates) is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_READ_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError)
_VALUE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError)

_FUNCTIONAL_GROUP_ALIASES = {"EchoTime": ("EffectiveEchoTime",)}
"""Classic keywords an Enhanced MR object stores under another name in its functional groups."""


@dataclass(frozen=True)
class Instance:
    """One DICOM file: its name in the upload, where it lies and its header (no pixels)."""

    name: str
    path: Path
    header: Dataset


@dataclass(frozen=True)
class IndexedSeries:
    """The instances of one series (SeriesInstanceUID), in upload order."""

    series_uid: str
    study_uid: str
    instances: tuple[Instance, ...]

    @property
    def header(self) -> Dataset:
        """The first instance's header (the series' shared attributes)."""
        return self.instances[0].header

    @property
    def is_multiframe(self) -> bool:
        """Whether the series stores its slices as frames of multiframe instances."""
        return any(frame_count(i.header) > 1 for i in self.instances)

    @property
    def slice_count(self) -> int:
        """Slices (frames) in the series."""
        return sum(frame_count(i.header) for i in self.instances)

    def attribute(self, keyword: str) -> Any:
        """A series attribute by DICOM keyword: the first instance's top-level element, else the
        Enhanced MR functional groups' (shared, then first frame's); None when absent."""
        return header_attribute(self.header, keyword)


@dataclass(frozen=True)
class StudyIndex:
    """Every image series found in an upload, and what was skipped."""

    series: tuple[IndexedSeries, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def study_uids(self) -> tuple[str, ...]:
        """The distinct StudyInstanceUIDs, in first-seen order."""
        return tuple(dict.fromkeys(s.study_uid for s in self.series))

    def by_uid(self, series_uid: str) -> IndexedSeries | None:
        """The series with this SeriesInstanceUID, or None."""
        for series in self.series:
            if series.series_uid == series_uid:
                return series
        return None


def _functional_group_value(header: Dataset, keyword: str) -> Any:
    names = (keyword, *_FUNCTIONAL_GROUP_ALIASES.get(keyword, ()))
    for groups_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = header.get(groups_keyword)
        if not groups:
            continue
        for macro in groups[0]:
            if macro.VR != "SQ" or not macro.value:
                continue
            item = macro.value[0]
            for name in names:
                if name in item and item[name].value not in (None, ""):
                    return item[name].value
    return None


def header_attribute(header: Dataset, keyword: str) -> Any:
    """``keyword``'s value in a header, looking into Enhanced MR functional groups when the
    top level lacks it; None when absent, empty or unreadable (a malformed value)."""
    try:
        if keyword in header:
            value = header[keyword].value
            if value not in (None, ""):
                return value
        return _functional_group_value(header, keyword)
    except _VALUE_ERRORS:
        return None


def frame_count(header: Dataset) -> int:
    """Frames in an instance (NumberOfFrames; 1 when absent or malformed)."""
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except _VALUE_ERRORS:
        return 1


def read_header(path: Path) -> Dataset | None:
    """The header of one file without its pixel data, or None when it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except _READ_ERRORS:
        return None


def index_files(files: Iterable[tuple[str, Path]], skipped: Sequence[str] = ()) -> StudyIndex:
    """Group readable DICOM image files into series by their headers.

    Args:
        files: (name in the upload, local path) of each candidate file.
        skipped: members the archive reader already left out, reported with the rest.

    Returns:
        The series (ordered by SeriesNumber, then UID) and the skipped files with reasons.
    """
    grouped: dict[str, list[Instance]] = {}
    left_out = list(skipped)
    for name, path in files:
        header = read_header(path)
        if header is None:
            left_out.append(f"{name}: not a DICOM file")
            continue
        sop_class = str(header.get("SOPClassUID", ""))
        media_class = str(getattr(header.get("file_meta"), "MediaStorageSOPClassUID", ""))
        if DICOMDIR_SOP_CLASS in (sop_class, media_class):
            left_out.append(f"{name}: DICOMDIR")
            continue
        if "Rows" not in header or "SeriesInstanceUID" not in header:
            left_out.append(f"{name}: not an image (SOP class {sop_class or 'unknown'})")
            continue
        grouped.setdefault(str(header.SeriesInstanceUID), []).append(
            Instance(name=name, path=path, header=header)
        )
    series = [
        IndexedSeries(
            series_uid=uid,
            study_uid=str(instances[0].header.get("StudyInstanceUID", "")),
            instances=tuple(instances),
        )
        for uid, instances in grouped.items()
    ]
    series.sort(key=lambda s: (_series_number(s), s.series_uid))
    logger.info(
        "indexed %d series in %d studies; %d files skipped",
        len(series),
        len({s.study_uid for s in series}),
        len(left_out),
    )
    return StudyIndex(series=tuple(series), skipped=tuple(left_out))


def _series_number(series: IndexedSeries) -> int:
    value = series.header.get("SeriesNumber")
    try:
        return int(value) if value not in (None, "") else 1 << 30
    except (TypeError, ValueError):
        return 1 << 30


def orientation_vectors(header: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """The unit row and column direction cosines (LPS) of a header, or None when absent."""
    value = header_attribute(header, "ImageOrientationPatient")
    if value is None or len(value) != 6:
        return None
    cosines = np.asarray([float(v) for v in value], dtype=np.float64)
    return cosines[:3], cosines[3:]


def plane_name(header: Dataset) -> tuple[str, float] | None:
    """The main plane (``axial``, ``coronal``, ``sagittal``) of a header's slices and the
    angle in degrees between the slice normal and that plane's axis; None without orientation.
    """
    vectors = orientation_vectors(header)
    if vectors is None:
        return None
    normal = np.cross(*vectors)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return None
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    angle = float(np.degrees(np.arccos(min(1.0, normal[axis]))))
    return ("sagittal", "coronal", "axial")[axis], angle
