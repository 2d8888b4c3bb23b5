"""A small process-wide LRU whose values are built once per key, even by concurrent callers.

Several analyzers of one study (``nogo``, ``hotspot``) ask for the same
:class:`~cerebrascan.atlas.structures.StructureAtlas`; a registration takes seconds, so the
second caller waits on a per-key lock for the first one's result instead of registering again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class BuildOnceCache(Generic[Value]):
    """Least-recently-used values by key, each built by exactly one caller.

    Args:
        size: how many values are kept; the least recently used is dropped first.

    Raises:
        ValueError: ``size`` is below 1.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"cache size must be >= 1, got {size}")
        self._size = size
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._values: OrderedDict[Hashable, Value] = OrderedDict()

    def get_or_build(self, key: Hashable, build: Callable[[], Value]) -> tuple[Value, bool]:
        """The value for ``key``, built by ``build()`` unless present.

        Concurrent callers with the same key wait for the first one's build.

        Returns:
            ``(value, reused)``: ``reused`` is True when the value was already there.
        """
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key], True
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._values:
                    return self._values[key], True
            value = build()
            with self._lock:
                self._values[key] = value
                while len(self._values) > self._size:
                    old, _ = self._values.popitem(last=False)
                    self._key_locks.pop(old, None)
            return value, False

    def clear(self) -> None:
        """Forget every value."""
        with self._lock:
            self._values.clear()
            self._key_locks.clear()
