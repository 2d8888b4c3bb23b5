"""Bounds on the server's work (``bounds`` settings): analyses at once, memory per request.

- :class:`AnalysisLimiter`: one count of analyses running in this worker, shared by HTTP
  ``/analyze*`` and gRPC ``ModelInfer``. A request waits up to ``bounds.queue_wait_s`` for a
  free slot (a queue bounded in time, and in length by the transports' own thread pools), then
  is refused: :class:`ServerBusyError`, HTTP 429 / gRPC ``RESOURCE_EXHAUSTED``.
- :func:`check_declared_memory`: the images of a NIfTI request, from their headers only,
  against ``bounds.max_request_memory_mb`` (413 naming the sizes) before any voxel is read.

The request deadline (``bounds.request_deadline_s``) is handed down by the pipeline to the
analyzers (:meth:`cerebrascan.pipeline.AnalysisPipeline.run`).
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from cerebrascan.errors import InputError

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
NIFTI2_SIZEOF_HDR = (540, 0x1C020000)
"""``sizeof_hdr`` of a NIfTI-2 header, little- and big-endian."""
DECODED_BYTES_PER_VOXEL = 4
"""Every image is decoded to float32, whatever its stored type."""


class ServerBusyError(InputError):
    """Every analysis slot is taken: HTTP 429, gRPC ``RESOURCE_EXHAUSTED``; retry later."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=429)


class AnalysisLimiter:
    """At most ``max_concurrent`` analyses at once, whichever transport they came by.

    Args:
        max_concurrent: analyses allowed at once (``bounds.max_concurrent_analyses``).
        queue_wait_s: how long a request waits for a slot before it is refused
            (``bounds.queue_wait_s``; 0 refuses at once).
    """

    def __init__(self, max_concurrent: int, queue_wait_s: float = 0.0) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if queue_wait_s < 0:
            raise ValueError(f"queue_wait_s must be at least 0, got {queue_wait_s}")
        self.max_concurrent = max_concurrent
        self.queue_wait_s = queue_wait_s
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        """Analyses holding a slot now."""
        with self._lock:
            return self._running

    @contextmanager
    def slot(self, transport: str) -> Iterator[None]:
        """Hold one analysis slot for the block.

        Args:
            transport: who asks (``HTTP /analyze``, ``gRPC ModelInfer``), for the message.

        Raises:
            ServerBusyError: no slot came free within ``queue_wait_s``.
        """
        if not self._slots.acquire(timeout=self.queue_wait_s):
            logger.warning("%s refused: %d analyses running", transport, self.max_concurrent)
            raise ServerBusyError(
                f"the server is busy: {self.max_concurrent} analyses are running (the limit, "
                f"bounds.max_concurrent_analyses, shared by HTTP and gRPC) and none finished "
                f"within {self.queue_wait_s:g} s; retry later"
            )
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()


def declared_image(path: Path) -> tuple[tuple[int, ...], int] | None:
    """The shape and stored bytes per voxel a NIfTI file's header declares (plain or gzip),
    or None when the header cannot be read (the decoder then refuses it, naming why)."""
    try:
        with path.open("rb") as probe:
            gzipped = probe.read(2) == GZIP_MAGIC
        with gzip.open(path, "rb") if gzipped else path.open("rb") as stream:
            head = stream.read(540)
        sizeof_hdr = int(np.frombuffer(head[:4], dtype="<i4")[0]) if len(head) >= 4 else 0
        header_class = nib.Nifti2Header if sizeof_hdr in NIFTI2_SIZEOF_HDR else nib.Nifti1Header
        header = header_class.from_fileobj(io.BytesIO(head))
        shape = tuple(int(size) for size in header.get_data_shape())
        stored = max(np.dtype(header.get_data_dtype()).itemsize, int(header["bitpix"]) // 8)
    except (
        OSError,
        EOFError,
        zlib.error,
        ValueError,
        KeyError,
        TypeError,
        HeaderDataError,
        WrapStructError,
    ) as exc:
        logger.debug("no declared size for %s: %s", path.name, exc)
        return None
    if not shape or any(size < 1 for size in shape):
        return None
    return shape, stored


def check_declared_memory(files: Mapping[str, Path], max_mb: float) -> int:
    """Refuse a request whose images declare more memory than ``max_mb`` MiB.

    Each image counts voxels x max(stored bytes per voxel, 4) (it is decoded to float32), all
    contrasts together: the memory the decoded study needs, from the headers alone.

    Args:
        files: request field (contrast) -> uploaded NIfTI file.
        max_mb: ``bounds.max_request_memory_mb``.

    Returns:
        The declared bytes (headers the decoder will refuse count 0 here).

    Raises:
        InputError: 413 naming each image's shape and bytes per voxel, the total and the budget.
    """
    parts: list[str] = []
    total = 0
    for field, path in files.items():
        declared = declared_image(path)
        if declared is None:
            continue
        shape, stored = declared
        total += math.prod(shape) * max(stored, DECODED_BYTES_PER_VOXEL)
        parts.append(f"{field} {'x'.join(map(str, shape))} x {stored} B")
    if total > max_mb * MIB:
        raise InputError(
            f"the images declare {total / MIB:.0f} MiB once decoded ({', '.join(parts)}; "
            f"float32 at least), over the per-request budget of {max_mb:g} MiB "
            "(bounds.max_request_memory_mb)",
            status_code=413,
        )
    return total
