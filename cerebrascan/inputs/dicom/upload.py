"""Entry points of the DICOM transport: an upload to an inventory, or to a built study (I/O).

The files of a request are unpacked into a temporary folder owned by the call and removed when
it returns, whatever happens.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from cerebrascan.errors import InputError
from cerebrascan.inputs.dicom.archive import StudyFiles, collect_uploads, unpack_archive
from cerebrascan.inputs.dicom.deid import Deidentifier
from cerebrascan.inputs.dicom.index import StudyIndex, index_files
from cerebrascan.inputs.dicom.inventory import inventory
from cerebrascan.inputs.dicom.selection import SelectionRule, load_rules, select_series
from cerebrascan.inputs.dicom.settings import DicomSettings
from cerebrascan.inputs.dicom.study_builder import (
    DicomStudy,
    NormaliseToAtlas,
    Register,
    StripSkull,
    build_study,
    choose_series,
)
from schemas.dicom import DicomInventory

logger = logging.getLogger(__name__)


def parse_series_map(value: Mapping[str, str] | str | None) -> dict[str, str] | None:
    """The ``series_map`` form field: ``{"t1c": SeriesInstanceUID, ...}`` (already decoded by
    the transport, or JSON text), or nothing.

    Raises:
        InputError: 400 when it is not an object of strings.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON ({exc})", status_code=400, field="series_map") from None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InputError(
            'must be a JSON object of contrast -> SeriesInstanceUID, e.g. {"t1c": "1.2.3"}',
            status_code=400,
            field="series_map",
        )
    return dict(value) or None


def single_archive(archives: Sequence[Path]) -> Path | None:
    """The one ``archive`` field of a request, or None when it has none.

    Raises:
        InputError: 400 for more than one ``archive`` field.
    """
    if len(archives) > 1:
        raise InputError(
            f"{len(archives)} archives sent; send one zip (or the files as repeated 'files')",
            status_code=400,
            field="archive",
        )
    return archives[0] if archives else None


def _study_files(
    archive: Path | None,
    files: Sequence[tuple[str, Path]],
    folder: Path,
    settings: DicomSettings,
) -> StudyFiles:
    if archive is not None and files:
        raise InputError(
            "send either an 'archive' (zip) or repeated 'files', not both", status_code=400
        )
    if archive is not None:
        return unpack_archive(archive, folder, settings)
    if not files:
        raise InputError(
            "no DICOM upload: send a zip as 'archive' or the files as repeated 'files' fields",
            status_code=400,
        )
    return collect_uploads(files, settings)


def _index(
    archive: Path | None, files: Sequence[tuple[str, Path]], folder: Path, settings: DicomSettings
) -> StudyIndex:
    found = _study_files(archive, files, folder, settings)
    index = index_files(found.files, found.skipped)
    if not index.series:
        raise InputError(
            f"no DICOM image series in the upload ({len(index.skipped)} files skipped: "
            f"{list(index.skipped[:5])})",
            status_code=422,
            field="archive" if archive is not None else "files",
        )
    return index


def inspect_upload(
    archive: Path | None,
    files: Sequence[tuple[str, Path]],
    modalities: tuple[str, ...],
    settings: DicomSettings,
    *,
    rules: Sequence[SelectionRule] | None = None,
    series_map: Mapping[str, str] | None = None,
) -> DicomInventory:
    """The inventory of an upload (``POST /dicom/inspect``): headers only, nothing analysed.

    Raises:
        InputError: the upload cannot be opened (see :mod:`.archive`) or holds no DICOM image.
    """
    with tempfile.TemporaryDirectory(prefix="cerebrascan-dicom-") as folder:
        index = _index(archive, files, Path(folder), settings)
        selection = select_series(
            index,
            rules if rules is not None else load_rules(settings.rules_file),
            modalities,
            series_map=series_map,
            min_slices=settings.min_slices,
        )
        return inventory(index, selection, modalities, settings)


def read_dicom_study(
    archive: Path | None,
    files: Sequence[tuple[str, Path]],
    modalities: tuple[str, ...],
    settings: DicomSettings,
    *,
    max_voxels: int,
    skull_stripped: bool,
    rules: Sequence[SelectionRule] | None = None,
    series_map: Mapping[str, str] | None = None,
    strip_skull: StripSkull | None = None,
    register: Register | None = None,
    deidentify: Deidentifier | None = None,
    normalise_to_atlas: NormaliseToAtlas | None = None,
) -> DicomStudy:
    """An upload to a checked study on the reference series' grid (``POST /analyze/dicom``);
    with ``deidentify``, what it keeps of the headers is de-identified (:mod:`.deid`).

    Raises:
        InputError: 4xx naming the member, series or contrast at fault (archive, selection,
            geometry, decoding, brain extraction or registration not configured).
    """
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cerebrascan-dicom-") as folder:
        index = _index(archive, files, Path(folder), settings)
        index_ms = (time.perf_counter() - clock) * 1000
        selection = choose_series(
            index,
            rules if rules is not None else load_rules(settings.rules_file),
            modalities,
            settings,
            series_map,
        )
        built = build_study(
            index,
            selection,
            modalities,
            settings,
            max_voxels=max_voxels,
            skull_stripped=skull_stripped,
            strip_skull=strip_skull,
            register=register,
            deidentify=deidentify,
            normalise_to_atlas=normalise_to_atlas,
        )
    return DicomStudy(study=built.study, timings_ms={"dicom_index": index_ms, **built.timings_ms})
