"""Study retention: delete stored studies older than ``retention.study_days`` (I/O).

:class:`RetentionSweeper` deletes them once at start and then every ``sweep_interval_s`` in a
daemon thread, through :class:`cerebrascan.store.deletion.StudyDeletion` (records and files,
logged by pseudonym).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from cerebrascan.serving.settings import RetentionSettings
from cerebrascan.store.deletion import StudyDeletion

logger = logging.getLogger(__name__)


class RetentionSweeper:
    """Deletes studies past their retention.

    Args:
        settings: the ``retention`` settings (``study_days`` unset: nothing is deleted).
        deletion: deletes a study's record and files.
    """

    def __init__(self, settings: RetentionSettings, deletion: StudyDeletion) -> None:
        self.settings = settings
        self.deletion = deletion
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> int:
        """Delete the studies analysed more than ``study_days`` before ``now``; how many."""
        if self.settings.study_days is None:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.settings.study_days)
        return self.deletion.delete_expired(cutoff)

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:  # a store that is down now may be back at the next sweep
                logger.warning("retention sweep failed", exc_info=True)
            if self._stop.wait(self.settings.sweep_interval_s):
                return

    def start(self) -> bool:
        """Start sweeping in a daemon thread (not when ``study_days`` is unset)."""
        if self.settings.study_days is None or self._thread is not None:
            return False
        self._thread = threading.Thread(target=self._loop, name="study-retention", daemon=True)
        self._thread.start()
        logger.info(
            "studies older than %d days are deleted every %d s",
            self.settings.study_days,
            self.settings.sweep_interval_s,
        )
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the sweeping thread (after the sweep it may be running)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
