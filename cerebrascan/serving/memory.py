"""How the server's worker processes keep freed memory: glibc ``malloc`` settings (docs/serving.md).

An analysis allocates and frees the same few hundred MB per study (decoded images, masks,
probabilities, analyzer temporaries). By default glibc hands every block over 32 MB (and each
thread's arena above it) straight back to the kernel when freed, so the next study faults every
page in again; on virtual machines whose host reclaims freed guest memory that costs ~5 ms per
MB (a 143 MB buffer: 0.2-2 s on first touch, 2 ms when reused; benchmarks/README.md, "Outside
the network"). These variables make glibc keep freed memory for the next study instead: one
arena for all threads, no ``mmap``-backed blocks, no trimming. The price is that a worker's
resident memory stays at its peak between studies instead of falling back.

They are the service's BentoML ``envs``: ``bentoml serve`` (and a built bento) sets them in the
worker processes, where glibc reads them at start; a value already in the environment wins, so
an operator restores glibc's defaults with e.g. ``MALLOC_ARENA_MAX=8 MALLOC_MMAP_MAX_=65536
MALLOC_TRIM_THRESHOLD_=131072``. Other C libraries ignore them.
"""

from __future__ import annotations

RETAIN_FREED_MEMORY: dict[str, str] = {
    # every thread allocates from the main heap (threads' own arenas give big blocks back)
    "MALLOC_ARENA_MAX": "1",
    # no block is its own mmap (those are unmapped on free, whatever their size)
    "MALLOC_MMAP_MAX_": "0",
    # the heap's free top is never returned to the kernel (64 GiB: more than a worker holds)
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30),
}
"""glibc ``malloc`` environment of the worker processes: freed memory stays for reuse."""


def service_envs() -> list[dict[str, str]]:
    """:data:`RETAIN_FREED_MEMORY` as BentoML service ``envs`` (set when the workers start)."""
    return [
        {"name": name, "value": value, "stage": "runtime"}
        for name, value in RETAIN_FREED_MEMORY.items()
    ]
