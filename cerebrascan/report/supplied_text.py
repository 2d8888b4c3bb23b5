"""Free text that arrived with a study, kept beside it for the LLM report writer (the I/O).

The text is untrusted and may identify a patient, so it is kept apart from everything else: one
file, ``supplied_text.json``, readable by the service's user only, in the study's folder. It is
never part of the findings (``result.json``, the study store's records, the API's answers) and
never logged; a report lists only its field names. It is kept only where an LLM writer may run
(:meth:`~cerebrascan.report.settings.ReportSettings.keeps_supplied_text`) and goes with the
study's folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

SUPPLIED_TEXT_FILE = "supplied_text.json"
MAX_FIELDS = 16
MAX_FIELD_CHARS = 1000


def save_supplied_text(folder: Path, texts: Mapping[str, str]) -> Path | None:
    """Write ``texts`` (field name -> text) into ``folder`` with mode 0600; nothing if empty.

    At most :data:`MAX_FIELDS` fields of :data:`MAX_FIELD_CHARS` characters are kept.

    Returns:
        The file written, or None.
    """
    kept = {str(k): str(v)[:MAX_FIELD_CHARS] for k, v in list(texts.items())[:MAX_FIELDS] if v}
    if not kept:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUPPLIED_TEXT_FILE
    staging = folder / f".{SUPPLIED_TEXT_FILE}.partial"
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(kept, handle, ensure_ascii=True)
    os.replace(staging, path)
    return path


def load_supplied_text(folder: Path) -> dict[str, str]:
    """The texts kept for a study, or {} (none kept, or the file is unreadable: the writer then
    goes without; the reason is logged, the text never)."""
    path = folder / SUPPLIED_TEXT_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("%s of study %s is unreadable (%s)", path.name, folder.name, type(exc))
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v)[:MAX_FIELD_CHARS] for k, v in data.items() if isinstance(v, str)}
