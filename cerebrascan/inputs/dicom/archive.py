"""Open an uploaded DICOM study safely: a zip archive or repeated multipart files (I/O).

An archive is never extracted blindly. Every member is checked before a byte of it is written:
absolute paths, ``..`` components, symbolic links, device files and encrypted members are
refused (400 naming the member); the member count, each member's and the total uncompressed
size and the compression ratio are capped (413). Each member is copied in chunks and counted as
it is inflated, so a member lying about its size in the zip directory cannot exceed the caps.
``__MACOSX`` resource forks, ``._*`` AppleDouble files, folders and ``DICOMDIR`` are skipped;
whether the remaining files are DICOM at all is for :mod:`.index` to decide.
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from cerebrascan.errors import InputError
from cerebrascan.inputs.dicom.settings import DicomSettings

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
RATIO_CHECK_MIN_BYTES = MIB
"""Members smaller than this are not held to the compression ratio: a mostly blank slice
deflates far better than a bomb's budget matters, and the size caps bound them anyway."""
_CHUNK = MIB
_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_TYPES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class StudyFiles:
    """The candidate files of one uploaded study, ready to be indexed.

    Attributes:
        files: (name in the upload, local path) of every member kept.
        skipped: names of members left out and why (``__MACOSX``, ``DICOMDIR``, folders).
    """

    files: tuple[tuple[str, Path], ...]
    skipped: tuple[str, ...] = ()


def _skip_reason(name: str) -> str | None:
    parts = PurePosixPath(name).parts
    if name.endswith("/"):
        return "folder"
    if "__MACOSX" in parts or (parts and parts[-1].startswith("._")):
        return "macOS resource fork"
    if parts and parts[-1].upper() == "DICOMDIR":
        return "DICOMDIR (the files are indexed directly)"
    if parts and parts[-1] in {".DS_Store", "Thumbs.db"}:
        return "desktop metadata"
    return None


def check_member_name(name: str) -> None:
    """Refuse a member name that could write outside the extraction folder.

    Raises:
        InputError: 400 for an absolute path, a drive letter, a ``..`` component or a NUL.
    """
    normalised = name.replace("\\", "/")
    if "\x00" in name:
        raise InputError(f"member {name!r} has a NUL byte in its name", status_code=400)
    if normalised.startswith("/") or _DRIVE.match(normalised):
        raise InputError(f"member {name!r} has an absolute path", status_code=400, field="archive")
    if ".." in PurePosixPath(normalised).parts:
        raise InputError(
            f"member {name!r} has a '..' path component", status_code=400, field="archive"
        )


def _check_member_type(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    file_type = stat.S_IFMT(mode)
    if file_type in _UNSAFE_TYPES:
        raise InputError(
            f"member {info.filename!r} is {_UNSAFE_TYPES[file_type]}; only regular files are "
            "accepted",
            status_code=400,
            field="archive",
        )
    if info.flag_bits & 0x1:
        raise InputError(f"member {info.filename!r} is encrypted", status_code=400, field="archive")


def _check_sizes(members: Sequence[zipfile.ZipInfo], settings: DicomSettings) -> None:
    if len(members) > settings.max_members:
        raise InputError(
            f"archive holds {len(members)} files, over the limit of {settings.max_members} "
            "(dicom.max_members)",
            status_code=413,
            field="archive",
        )
    max_member = int(settings.max_member_mb * MIB)
    total = 0
    compressed = 0
    for info in members:
        if info.file_size > max_member:
            raise InputError(
                f"member {info.filename!r} inflates to {info.file_size} bytes, over the limit of "
                f"{max_member} (dicom.max_member_mb)",
                status_code=413,
                field="archive",
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > settings.max_compression_ratio:
            raise InputError(
                f"member {info.filename!r} has a compression ratio of {ratio:.0f}, over the "
                f"limit of {settings.max_compression_ratio:g} (dicom.max_compression_ratio): "
                "refused as a possible zip bomb",
                status_code=413,
                field="archive",
            )
        total += info.file_size
        compressed += info.compress_size
    if total > settings.max_total_mb * MIB:
        raise InputError(
            f"archive inflates to {total} bytes, over the limit of "
            f"{int(settings.max_total_mb * MIB)} (dicom.max_total_mb)",
            status_code=413,
            field="archive",
        )
    if total >= RATIO_CHECK_MIN_BYTES and total / max(compressed, 1) > (
        settings.max_compression_ratio
    ):
        raise InputError(
            f"archive has a compression ratio of {total / max(compressed, 1):.0f}, over the "
            f"limit of {settings.max_compression_ratio:g} (dicom.max_compression_ratio)",
            status_code=413,
            field="archive",
        )


def _copy_bounded(source: IO[bytes], target: Path, info: zipfile.ZipInfo) -> None:
    """Inflate one member, never writing more than its declared size."""
    written = 0
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise InputError(
                    f"member {info.filename!r} inflates past its declared size of "
                    f"{info.file_size} bytes",
                    status_code=400,
                    field="archive",
                )
            out.write(chunk)


def unpack_archive(archive: Path, out_dir: Path, settings: DicomSettings) -> StudyFiles:
    """Check every member of a zip archive, then extract the kept ones under ``out_dir``.

    Args:
        archive: the uploaded zip file (nested folders allowed).
        out_dir: an empty folder owned by the request; members are written as numbered files.
        settings: the ``dicom`` section (caps).

    Returns:
        The extracted files with their names in the archive, and the skipped members.

    Raises:
        InputError: 400 for a file that is not a zip archive, an unsafe member (absolute path,
            ``..``, link, device, encrypted) or a corrupt one; 413 for a cap exceeded.
    """
    try:
        opened = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(
            f"not a readable zip archive ({exc})", status_code=400, field="archive"
        ) from exc
    with opened:
        members: list[zipfile.ZipInfo] = []
        skipped: list[str] = []
        for info in opened.infolist():
            check_member_name(info.filename)
            _check_member_type(info)
            reason = _skip_reason(info.filename)
            if reason is not None or info.is_dir():
                skipped.append(f"{info.filename}: {reason or 'folder'}")
                continue
            members.append(info)
        _check_sizes(members, settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        files: list[tuple[str, Path]] = []
        for number, info in enumerate(members):
            target = out_dir / f"{number:06d}.dcm"
            try:
                with opened.open(info) as source:
                    _copy_bounded(source, target, info)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise InputError(
                    f"member {info.filename!r} cannot be extracted ({exc})",
                    status_code=400,
                    field="archive",
                ) from exc
            files.append((info.filename, target))
    logger.info("archive: %d files kept, %d skipped", len(files), len(skipped))
    return StudyFiles(files=tuple(files), skipped=tuple(skipped))


def collect_uploads(uploads: Sequence[tuple[str, Path]], settings: DicomSettings) -> StudyFiles:
    """The repeated ``files`` fields of a request as a study's candidate files.

    Args:
        uploads: (client file name, saved path) per field.
        settings: the ``dicom`` section (caps).

    Raises:
        InputError: 413 for more files than ``dicom.max_members`` or more bytes than
            ``dicom.max_total_mb``; 400 for a symbolic link or non-regular file.
    """
    if len(uploads) > settings.max_members:
        raise InputError(
            f"{len(uploads)} files uploaded, over the limit of {settings.max_members} "
            "(dicom.max_members)",
            status_code=413,
            field="files",
        )
    total = 0
    kept: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for name, path in uploads:
        if path.is_symlink() or not path.is_file():
            raise InputError(f"file {name!r} is not a regular file", status_code=400, field="files")
        reason = _skip_reason(name)
        if reason is not None:
            skipped.append(f"{name}: {reason}")
            continue
        total += path.stat().st_size
        kept.append((name, path))
    if total > settings.max_total_mb * MIB:
        raise InputError(
            f"files hold {total} bytes, over the limit of {int(settings.max_total_mb * MIB)} "
            "(dicom.max_total_mb)",
            status_code=413,
            field="files",
        )
    return StudyFiles(files=tuple(kept), skipped=tuple(skipped))


def remove_folder(folder: Path) -> None:
    """Delete a request's extraction folder (errors logged, never raised)."""
    shutil.rmtree(folder, ignore_errors=True)
