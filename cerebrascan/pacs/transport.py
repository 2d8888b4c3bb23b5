"""A socket option for pynetdicom associations (network I/O)."""

from __future__ import annotations

import logging
import socket
from typing import Any

logger = logging.getLogger(__name__)


def disable_nagle(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: set TCP_NODELAY on the association's socket.

    A C-STORE is a small command and a dataset written separately; with Nagle's algorithm on
    both ends each exchange waits for a delayed ACK (~40 ms), which made a 216-instance study
    take 11 s instead of 3 s on loopback. pynetdicom has no option for it.
    """
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(raw, socket.socket):
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # a socket closed already: nothing to tune
            logger.debug("TCP_NODELAY not set: %s", exc)
