"""The receiver's spool: the instances of each study on disk and its analysis state (file
bookkeeping only, no network, no analysis).

Layout under the spool root, one folder per study named by a hash of its StudyInstanceUID (no
UID or patient data in file names or log lines)::

    <key>/instances/<hash of SOPInstanceUID>.dcm   received before the analysis started
    <key>/late/<hash of SOPInstanceUID>.dcm        received after it started: kept, not analysed
    <key>/claimed                                  the analysis started (created exclusively)
    <key>/done.json                                {"study_id": ...}: analysed and stored
    <key>/failed.json                              {"error": ...}: the analysis refused the study

A study is claimed at most once (``claimed`` is created with ``O_EXCL``), so it is analysed at
most once even if two pollers race; within one process every instance that arrived before the
claim is analysed and every later one is kept as late (one lock orders them). A study claimed by
a process that died before ``done.json`` is reported as interrupted at the next start and not
analysed again (at most once across crashes; docs/dicom.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

SpoolState = Literal["receiving", "analysing", "done", "failed"]

INSTANCES = "instances"
LATE = "late"
CLAIMED = "claimed"
DONE = "done.json"
FAILED = "failed.json"


def study_key(study_uid: str) -> str:
    """The spool's name of a study: a hash of its StudyInstanceUID (32 hex digits)."""
    return hashlib.sha256(study_uid.strip().encode()).hexdigest()[:32]


def _instance_name(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.strip().encode()).hexdigest()[:32] + ".dcm"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader never sees half of it."""
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Arrival:
    """Where a received instance went."""

    key: str
    late: bool
    """True: its study's analysis had started; kept under ``late/``, not analysed."""


@dataclass(frozen=True)
class SpooledStudy:
    """A study's state in the spool."""

    key: str
    state: SpoolState
    instances: int
    late_instances: int
    study_id: str | None = None
    """The stored study's id once ``done``."""
    error: str | None = None
    """Why the analysis failed, once ``failed``."""


class StudySpool:
    """The instances and analysis state of received studies under ``root``.

    Args:
        root: the spool folder (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # last arrival per study still receiving (monotonic clock); studies found at start
        # restart their quiet period now
        self._last_arrival: dict[str, float] = {}
        self._late_logged: set[str] = set()  # one log line per study, not one per instance
        now = time.monotonic()
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if (folder / CLAIMED).exists():
                if not (folder / DONE).exists() and not (folder / FAILED).exists():
                    self._mark_failed(folder, "interrupted: the receiver stopped during analysis")
                    logger.warning(
                        "spooled study %s was being analysed when the receiver stopped; "
                        "not analysed again (send it to POST /analyze/dicom)",
                        folder.name,
                    )
            elif (folder / INSTANCES).is_dir():
                self._last_arrival[folder.name] = now

    def store(self, study_uid: str, sop_instance_uid: str, data: bytes) -> Arrival:
        """Keep one received instance (``data``: a DICOM file, meta header included).

        An instance sent twice is kept once (named by its SOPInstanceUID).
        """
        key = study_key(study_uid)
        folder = self.root / key
        with self._lock:
            late = (folder / CLAIMED).exists()
            target = folder / (LATE if late else INSTANCES)
            target.mkdir(parents=True, exist_ok=True)
            _write_atomically(target / _instance_name(sop_instance_uid), data)
            if not late:
                self._last_arrival[key] = time.monotonic()
            first_late = late and key not in self._late_logged
            if first_late:
                self._late_logged.add(key)
        if first_late:
            logger.info(
                "spooled study %s: instances arrive after its analysis started; kept under "
                "late/, not analysed again",
                key,
            )
        return Arrival(key=key, late=late)

    def due(self, quiet_seconds: float, now: float | None = None) -> list[str]:
        """Studies still receiving whose last instance arrived ``quiet_seconds`` ago or more
        (``now``: a :func:`time.monotonic` reading; default: now)."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            return sorted(
                key for key, last in self._last_arrival.items() if moment - last >= quiet_seconds
            )

    def claim(self, key: str) -> list[Path] | None:
        """Start a study's analysis: the instance files to analyse, or None when it was
        claimed before (by this or another process) or holds no instance."""
        folder = self.root / key
        with self._lock:
            self._last_arrival.pop(key, None)
            try:
                os.close(os.open(folder / CLAIMED, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return None
            except FileNotFoundError:  # no such study folder
                return None
            return sorted((folder / INSTANCES).glob("*.dcm"))

    def finish(self, key: str, study_id: str) -> None:
        """Record a claimed study as analysed and stored under ``study_id``."""
        _write_atomically(self.root / key / DONE, json.dumps({"study_id": study_id}).encode())

    def fail(self, key: str, error: str) -> None:
        """Record a claimed study's analysis as failed (it is not retried)."""
        self._mark_failed(self.root / key, error)

    @staticmethod
    def _mark_failed(folder: Path, error: str) -> None:
        _write_atomically(folder / FAILED, json.dumps({"error": error}).encode())

    def study(self, key: str) -> SpooledStudy | None:
        """A study's state, or None when the spool has never seen it."""
        folder = self.root / key
        if not folder.is_dir():
            return None
        count = len(list((folder / INSTANCES).glob("*.dcm")))
        late = len(list((folder / LATE).glob("*.dcm")))
        if (folder / DONE).exists():
            done = json.loads((folder / DONE).read_text())
            return SpooledStudy(key, "done", count, late, study_id=str(done["study_id"]))
        if (folder / FAILED).exists():
            failed = json.loads((folder / FAILED).read_text())
            return SpooledStudy(key, "failed", count, late, error=str(failed["error"]))
        state: SpoolState = "analysing" if (folder / CLAIMED).exists() else "receiving"
        return SpooledStudy(key, state, count, late)
