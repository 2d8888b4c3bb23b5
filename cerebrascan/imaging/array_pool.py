"""Large per-study arrays whose memory is kept between studies and handed out again.

A whole-study array (the decoded study, 143 MB for four 240x240x155 float32 contrasts; the
probabilities on the input grid, 71 MB) is usually mapped afresh for every request and unmapped
after it. On a virtual machine whose host reclaims the guest's freed memory, touching such
fresh pages is slow: 71 MB cost 400-770 ms when their memory had been free for 10 s, against
11 ms for memory the process kept (benchmarks/README.md, "Fresh pages"). Keeping *all* freed
memory in the allocator (glibc's retention settings) grew a server's RSS by 21.6 % in a
10-minute soak; this pool keeps only the large arrays asked for here, up to a fixed number of
bytes, so what it holds is bounded by construction.

An array from the pool is an ordinary numpy array over a block of anonymous memory. Its block
returns to the pool only when that array *and every view of it* are gone (a weak reference on
the array, which every view keeps alive), so nothing still reachable can see its memory
reused. Blocks that do not fit under :attr:`ArrayPool.max_bytes` are unmapped.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

MIN_POOLED_BYTES = 32 << 20
"""Arrays smaller than this come from numpy as usual. 32 MiB is glibc's largest mmap threshold:
smaller blocks stay in its heap from call to call anyway, and pooling them too (from 1 MiB)
made warm preprocessing ~15 % slower, its temporaries spread over more memory than the heap's
reuse of one region."""

BLOCK_ALIGNMENT = 1 << 21
"""Blocks are whole 2 MiB (huge) pages, so close sizes share a block size."""

STAGGER_BYTES = 4096
"""Each array starts at one of 64 cache-line offsets into its block's first 4 KiB (the block
has that much to spare), so arrays from the pool do not all begin on a page boundary, where
their elements would compete for the same cache sets."""

MAX_SLACK = 1.25
"""A free block serves a request of at least ``1 / MAX_SLACK`` of its size (or of the block a
new one would get), so a small array does not hold a large block while a large array maps a
new one."""


@dataclass(frozen=True)
class PoolStats:
    """What the pool holds and has done since it was made."""

    max_bytes: int
    free_bytes: int
    """Bytes of free blocks kept for reuse (at most ``max_bytes``)."""
    in_use_bytes: int
    """Bytes of blocks under live arrays."""
    reused: int
    """Arrays served from a kept block."""
    mapped: int
    """Arrays for which a new block was mapped."""
    unmapped: int
    """Blocks given back to the system because they did not fit under ``max_bytes``."""


class ArrayPool:
    """Blocks of memory for large arrays, reused from request to request.

    Args:
        max_bytes: most bytes of *free* blocks kept between uses; 0 turns the pool off
            (every array then comes from ``np.empty`` / ``np.zeros``).
        min_bytes: arrays smaller than this come from numpy as usual.

    Raises:
        ValueError: ``max_bytes`` or ``min_bytes`` is negative.
    """

    def __init__(self, max_bytes: int = 0, *, min_bytes: int = MIN_POOLED_BYTES) -> None:
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be >= 0, got {min_bytes}")
        self._min_bytes = int(min_bytes)
        self._lock = threading.Lock()
        self._free: OrderedDict[int, mmap.mmap] = OrderedDict()  # id -> block, oldest first
        # Blocks of arrays just gone, taken in under the lock by whoever holds it next: a
        # finalizer may run inside a locked section of this very thread (a garbage collection
        # triggered there), so it never waits for the lock.
        self._returned: deque[mmap.mmap] = deque()
        self._max_bytes = 0
        self._free_bytes = 0
        self._in_use_bytes = 0
        self._reused = self._mapped = self._unmapped = 0
        self.configure(max_bytes)

    def configure(self, max_bytes: int) -> None:
        """Set the most bytes of free blocks kept; free blocks over it are unmapped at once.

        Raises:
            ValueError: ``max_bytes`` is negative.
        """
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        with self._lock:
            self._max_bytes = int(max_bytes)
            self._take_in_returned()
            self._evict_to(self._max_bytes)
        logger.debug("array pool keeps up to %d MiB of free blocks", max_bytes >> 20)

    @property
    def min_bytes(self) -> int:
        """Arrays smaller than this come from numpy as usual."""
        return self._min_bytes

    @property
    def max_bytes(self) -> int:
        """Most bytes of free blocks kept between uses (0: the pool is off)."""
        return self._max_bytes

    def stats(self) -> PoolStats:
        """A snapshot of what the pool holds and has done."""
        with self._lock:
            self._take_in_returned()
            return PoolStats(
                max_bytes=self._max_bytes,
                free_bytes=self._free_bytes,
                in_use_bytes=self._in_use_bytes,
                reused=self._reused,
                mapped=self._mapped,
                unmapped=self._unmapped,
            )

    def empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """A C-contiguous array of ``shape`` and ``dtype`` with undefined values, like
        ``np.empty``; from a kept block when one fits.

        Raises:
            ValueError: a negative dimension in ``shape``.
        """
        return self._array(shape, dtype, zeroed=False)

    def zeros(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """Like :meth:`empty`, filled with zeros (a new block is zero already)."""
        return self._array(shape, dtype, zeroed=True)

    def _array(
        self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, zeroed: bool
    ) -> npt.NDArray[Any]:
        shape = tuple(int(size) for size in shape)
        if any(size < 0 for size in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if self._max_bytes == 0 or nbytes < self._min_bytes:
            return np.zeros(shape, dtype) if zeroed else np.empty(shape, dtype)
        block, fresh, handed_out = self._take(nbytes + STAGGER_BYTES)
        offset = (handed_out % (STAGGER_BYTES // 64)) * 64
        array: npt.NDArray[Any] = np.ndarray(shape, dtype=dtype, buffer=block, offset=offset)
        # The block is the array's base (not an ndarray), so every view of the array keeps the
        # array itself alive: the finalizer runs once nothing can reach the memory.
        finalizer = weakref.finalize(array, self._give_back, block)
        finalizer.atexit = False
        if zeroed and not fresh:
            array.fill(0)
        return array

    def _take(self, nbytes: int) -> tuple[mmap.mmap, bool, int]:
        """A kept block for ``nbytes`` (best fit within :data:`MAX_SLACK`), or a new one;
        whether it is new (zero-filled by the kernel); and how many arrays were handed out
        before."""
        with self._lock:
            self._take_in_returned()
            new_size = math.ceil(nbytes / BLOCK_ALIGNMENT) * BLOCK_ALIGNMENT
            largest = max(new_size, nbytes * MAX_SLACK)
            best: tuple[int, mmap.mmap] | None = None
            # the most recently returned of the best-fitting size: its memory is likeliest to
            # be in the CPU's caches still
            for key, block in reversed(self._free.items()):
                size = len(block)
                if nbytes <= size <= largest and (best is None or size < len(best[1])):
                    best = (key, block)
            if best is not None:
                del self._free[best[0]]
                self._free_bytes -= len(best[1])
                self._in_use_bytes += len(best[1])
                self._reused += 1
                return best[1], False, self._reused + self._mapped
            self._in_use_bytes += new_size
            self._mapped += 1
            handed_out = self._reused + self._mapped
        block = mmap.mmap(-1, new_size)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            block.madvise(mmap.MADV_HUGEPAGE)  # as numpy does for its large arrays
        return block, True, handed_out

    def _give_back(self, block: mmap.mmap) -> None:
        """The finalizer of an array: queue its block, and take it in now if the lock is free."""
        self._returned.append(block)
        if self._lock.acquire(blocking=False):
            try:
                self._take_in_returned()
            finally:
                self._lock.release()

    def _take_in_returned(self) -> None:
        """Keep each returned block for reuse if it fits under ``max_bytes`` (the oldest free
        blocks make room first); drop the others, which unmaps them once nothing uses them
        (lock held)."""
        while self._returned:
            block = self._returned.popleft()
            size = len(block)
            self._in_use_bytes -= size
            if size > self._max_bytes:
                self._unmapped += 1
                continue
            self._evict_to(self._max_bytes - size)
            self._free[id(block)] = block
            self._free_bytes += size

    def _evict_to(self, limit: int) -> None:
        """Drop the oldest free blocks until at most ``limit`` bytes are kept (lock held)."""
        while self._free and self._free_bytes > limit:
            _, block = self._free.popitem(last=False)
            self._free_bytes -= len(block)
            self._unmapped += 1


_default_pool = ArrayPool()


def _after_fork_in_child() -> None:
    """A forked child starts a pool of its own with the same bounds: the parent's lock may
    have been held by one of its threads at the fork, which the child would wait on forever."""
    global _default_pool
    _default_pool = ArrayPool(_default_pool.max_bytes, min_bytes=_default_pool.min_bytes)


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_pool() -> ArrayPool:
    """The process's pool, used by the imaging and input code. Off (0 bytes) until a server
    configures it from ``bounds.array_pool_mb``."""
    return _default_pool


def pooled_empty(shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """:meth:`ArrayPool.empty` of the process's pool."""
    return _default_pool.empty(shape, dtype)


def pooled_zeros(shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """:meth:`ArrayPool.zeros` of the process's pool."""
    return _default_pool.zeros(shape, dtype)
