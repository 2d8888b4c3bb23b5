"""Reading and writing a model folder's held-out precision record, ``precisions.json``.

The I/O half of the guard's held-out admission: JSON validated by
:class:`schemas.precision_record.PrecisionRecord` (never pickle); the decision itself is maths
in :func:`runners.precision_guard.admit_by_held_out_record`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from runners.engine_cache import file_digest
from schemas.precision_record import PrecisionRecord

PRECISION_RECORD_FILE = "precisions.json"


@dataclass(frozen=True)
class RecordReading:
    """What the model folder holds: a valid record, or why there is none."""

    record: PrecisionRecord | None
    problem: str | None = None
    """Why ``record`` is None: absent, unreadable or invalid (None when it was read)."""


def read_precision_record(model_folder: Path) -> RecordReading:
    """The folder's ``precisions.json``, or the reason it cannot be used.

    An unreadable or invalid record is reported, not raised: the guard then serves fp32 and
    says why, rather than stopping a start.
    """
    path = model_folder / PRECISION_RECORD_FILE
    if not path.is_file():
        return RecordReading(None, f"{path} is absent")
    try:
        return RecordReading(PrecisionRecord.model_validate_json(path.read_bytes()))
    except (OSError, ValidationError) as exc:
        first = str(exc).splitlines()[:3]
        return RecordReading(None, f"{path} is invalid ({' '.join(first)})"[:300])


def write_precision_record(model_folder: Path, record: PrecisionRecord) -> Path:
    """Write ``record`` as ``<model_folder>/precisions.json`` (atomically: a reader never sees
    half a file)."""
    path = model_folder / PRECISION_RECORD_FILE
    text = json.dumps(record.model_dump(mode="json", by_alias=True), indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(dir=model_folder, prefix=".precisions-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600: the served copy must be readable
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def separate_network_digest(model_folder: Path, network_file: str) -> str | None:
    """SHA-256 over a separate network's ``.xml`` and ``.bin`` digests (``model.int8.xml``),
    or None when either file is not in the folder."""
    xml = model_folder / network_file
    weights = xml.with_suffix(".bin")
    if not (xml.is_file() and weights.is_file()):
        return None
    return hashlib.sha256(f"{file_digest(xml)}:{file_digest(weights)}".encode()).hexdigest()
