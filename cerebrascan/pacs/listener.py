"""The DICOM receiver (network I/O): a pynetdicom C-STORE SCP that spools each study and
analyses it once no instance has arrived for ``pacs.listen_quiet_seconds``.

Every received instance is written to the :class:`~cerebrascan.pacs.spool.StudySpool` before the
C-STORE is answered, so a success status means the file is on disk. A poller thread claims the
studies that went quiet and analyses them one at a time; a study is claimed once, so it is
analysed once, and instances that arrive later are kept but not analysed (docs/dicom.md, "PACS").
No patient attribute or UID reaches a log line: studies are named by their spool key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cerebrascan.errors import InputError
from cerebrascan.pacs.settings import PacsSettings
from cerebrascan.pacs.spool import SpooledStudy, StudySpool, study_key
from cerebrascan.pacs.transport import disable_nagle
from schemas.analysis import AnalyzeResponse

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700

AnalyseFiles = Callable[[Sequence[Path]], AnalyzeResponse]
"""One study's instance files -> the stored analysis (:class:`.analysis.SpooledStudyAnalyser`)."""


class DicomListener:
    """A C-STORE SCP on ``settings.listen_host:listen_port`` feeding ``spool``; studies that
    went quiet are handed to ``analyse`` once each.

    Args:
        settings: the ``pacs`` section (AE title, address, quiet time).
        spool: where instances and study states are kept.
        analyse: analyses one study's files and stores the result.
        port: a port overriding ``settings.listen_port`` (0: any free port; see :attr:`port`).
    """

    def __init__(
        self,
        settings: PacsSettings,
        spool: StudySpool,
        analyse: AnalyseFiles,
        *,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.analyse = analyse
        self._port = settings.listen_port if port is None else port
        self._server: Any = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._analysis_lock = threading.Lock()  # one study at a time
        self._finished = threading.Condition()
        self.analysed = 0
        """Studies analysed (or refused) by this listener since it started."""

    @property
    def port(self) -> int:
        """The TCP port the receiver listens on (the bound one once started)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    def start(self) -> None:
        """Listen for associations and start the poller thread (returns at once)."""
        self._stopping.clear()
        self._server = self._ae().start_server(
            (self.settings.listen_host, self._port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, disable_nagle)],
        )
        self._poller = threading.Thread(target=self._poll, name="dicom-listen-poller", daemon=True)
        self._poller.start()
        logger.info(
            "DICOM receiver %s listening on %s:%d; studies are analysed after %.1f s quiet",
            self.settings.ae_title,
            self.settings.listen_host,
            self.port,
            self.settings.listen_quiet_seconds,
        )

    def stop(self) -> None:
        """Stop accepting associations and the poller (a running analysis finishes first)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        if self._poller is not None:
            self._poller.join()
        self._server = self._poller = None

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` return (safe in a signal handler)."""
        self._stopping.set()

    def serve_forever(self) -> None:
        """Start, block until :meth:`request_stop`, then stop."""
        self.start()
        self._stopping.wait()
        self.stop()

    def _on_store(self, event: Any) -> int:
        try:
            dataset = event.dataset
            study_uid = str(dataset.StudyInstanceUID)
            sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
        except (AttributeError, ValueError, KeyError) as exc:
            logger.warning("refused a C-STORE without a readable StudyInstanceUID: %s", exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            self.spool.store(study_uid, sop_instance_uid, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            logger.error("could not spool an instance: %s", exc)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def _poll(self) -> None:
        interval = min(1.0, self.settings.listen_quiet_seconds / 4)
        while not self._stopping.wait(interval):
            self.analyse_due()

    def analyse_due(self, now: float | None = None) -> list[str]:
        """Analyse every study quiet for ``listen_quiet_seconds`` at ``now`` (a
        :func:`time.monotonic` reading; default: now) that was not claimed before.

        Returns:
            The spool keys of the studies analysed (or refused) by this call.
        """
        handled = []
        with self._analysis_lock:
            for key in self.spool.due(self.settings.listen_quiet_seconds, now):
                files = self.spool.claim(key)
                if files is None:
                    continue
                self._analyse(key, files)
                handled.append(key)
        return handled

    def _analyse(self, key: str, files: list[Path]) -> None:
        clock = time.perf_counter()
        try:
            response = self.analyse(files)
        except InputError as exc:
            self.spool.fail(key, str(exc))
            logger.warning("received study %s was refused: %s", key, exc)
        except Exception as exc:  # a failed study must not stop the receiver (logged)
            self.spool.fail(key, f"{type(exc).__name__}: {exc}")
            logger.exception("received study %s failed", key)
        else:
            self.spool.finish(key, response.study_id)
            logger.info(
                "received study %s (%d instances) analysed as study %s in %.1f s",
                key,
                len(files),
                response.study_id,
                time.perf_counter() - clock,
            )
        with self._finished:
            self.analysed += 1
            self._finished.notify_all()

    def wait_for(self, study_uid: str, timeout: float) -> SpooledStudy:
        """Block until the study with ``study_uid`` is done or failed (at most ``timeout``
        seconds) and return its state.

        Raises:
            TimeoutError: it was not analysed in time.
        """
        key = study_key(study_uid)
        deadline = time.monotonic() + timeout
        with self._finished:
            while True:
                state = self.spool.study(key)
                if state is not None and state.state in ("done", "failed"):
                    return state
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"study {key} not analysed within {timeout} s: {state}")
                self._finished.wait(left)
