"""Is an engine able to answer? The reference-tile check and the sticky-failure decision.

- :func:`check_reference_tile` runs one deterministic tile through an engine and checks its
  logits (shape and finiteness): a promotion runs it before the alias moves, readiness probes
  run it (cached) to say the engine still answers.
- :class:`EngineHealth` counts an engine's consecutive failures and decides when the process
  can no longer recover (:class:`runners.errors.StickyEngineError`): the runner service then
  exits non-zero so its supervisor restarts it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runners.errors import EngineCheckError, StickyEngineError
from runners.precision_guard import reference_tile
from runners.protocol import SegmentationRunner, TileRunner

logger = logging.getLogger(__name__)

STICKY_FAILURES = 3
"""Consecutive failed engine calls after which the engine is taken as broken for good."""

UNRECOVERABLE_MARKERS = (
    "illegal memory access",
    "cudaerrorillegaladdress",
    "cuda_error_illegal_address",
    "device-side assert",
    "cuda error: unspecified launch failure",
    "cudaerrorlaunchfailure",
    "context is destroyed",
    "cudaerrordevicesunavailable",
)
"""Error texts of GPU faults after which a CUDA context stays unusable in the process."""


def check_reference_tile(runner: TileRunner) -> None:
    """Run the spec's reference tile through ``runner`` and check the logits.

    Args:
        runner: a built engine (``predict_tiles``).

    Raises:
        EngineCheckError: the engine raised, or its logits are not ``(1, num_outputs, *patch)``
            or hold NaN/infinite values.
    """
    spec = runner.spec
    tile = reference_tile(spec)
    try:
        logits = np.asarray(runner.predict_tiles(tile))
    except Exception as exc:  # any engine failure is the check's answer
        raise EngineCheckError(
            f"the engine failed on the reference tile: {type(exc).__name__}: {exc}"
        ) from exc
    expected = (1, spec.num_outputs, *spec.patch_size)
    if tuple(logits.shape) != expected:
        raise EngineCheckError(
            f"the engine's logits for the reference tile have shape {tuple(logits.shape)}, "
            f"expected {expected}"
        )
    bad = int(np.size(logits) - np.count_nonzero(np.isfinite(logits)))
    if bad:
        raise EngineCheckError(
            f"the engine's logits for the reference tile hold {bad} NaN or infinite values"
        )


def check_runner(runner: SegmentationRunner) -> None:
    """Check that ``runner`` answers: its own ``check_engine()`` when it has one (the front's
    proxy of the runner service asks the service to load and check the version there), else
    :func:`check_reference_tile` in this process.

    Raises:
        EngineCheckError: the engine cannot answer (see :func:`check_reference_tile`).
    """
    own_check = getattr(runner, "check_engine", None)
    if callable(own_check):
        own_check()
        return
    if not callable(getattr(runner, "predict_tiles", None)):
        raise EngineCheckError(f"runner {runner.name!r} can neither check itself nor run tiles")
    check_reference_tile(runner)  # type: ignore[arg-type]


def is_unrecoverable(error: BaseException) -> bool:
    """Whether ``error`` leaves the engine unusable in this process whatever comes next."""
    if isinstance(error, StickyEngineError):
        return True
    text = str(error).lower()
    return any(marker in text for marker in UNRECOVERABLE_MARKERS)


class EngineHealth:
    """Counts consecutive engine failures; decides when the engine is broken for good.

    A success resets the count. The engine is sticky-broken after ``max_failures`` failures in
    a row, or at once on an error :func:`is_unrecoverable` names. Thread-safe.

    Args:
        max_failures: consecutive failures tolerated before the engine counts as broken.
    """

    def __init__(self, max_failures: int = STICKY_FAILURES) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
        self.max_failures = max_failures
        self._lock = threading.Lock()
        self._failures = 0
        self._sticky: str | None = None

    def record_success(self) -> None:
        """The engine answered: consecutive failures start again from zero."""
        with self._lock:
            if self._sticky is None:
                self._failures = 0

    def record_failure(self, error: BaseException) -> bool:
        """Count a failed engine call.

        Returns:
            True when the engine is now (or already was) broken for good.
        """
        with self._lock:
            self._failures += 1
            if self._sticky is None:
                if is_unrecoverable(error):
                    self._sticky = f"unrecoverable engine error: {type(error).__name__}: {error}"
                elif self._failures >= self.max_failures:
                    self._sticky = (
                        f"{self._failures} consecutive engine failures, the last "
                        f"{type(error).__name__}: {error}"
                    )
            return self._sticky is not None

    @property
    def sticky_reason(self) -> str | None:
        """Why the engine is broken for good, or None while it may still recover."""
        with self._lock:
            return self._sticky


@dataclass(frozen=True)
class Probe:
    """One readiness answer: whether the engine answered, and why not."""

    ready: bool
    reason: str | None
    checked_at: float


class CachedProbe:
    """A readiness probe through the engine, run at most once per ``ttl_s`` seconds.

    Args:
        check: raises when the engine cannot answer (e.g. :func:`check_reference_tile`).
        ttl_s: how long an answer is reused.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        check: Callable[[], None],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Probe | None = None

    def __call__(self) -> Probe:
        """The cached answer, or a fresh one once it is older than ``ttl_s``."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last.checked_at < self.ttl_s:
                return self._last
            try:
                self._check()
                probe = Probe(True, None, now)
            except Exception as exc:  # noqa: BLE001 - any failure is the probe's answer
                probe = Probe(False, f"{type(exc).__name__}: {exc}", now)
                logger.warning("readiness probe failed: %s", probe.reason)
            self._last = probe
            return probe


STICKY_EXIT_CODE = 75
"""Exit status of a runner process whose engine is broken for good (``EX_TEMPFAIL``: the
supervisor restarts it)."""


def exit_if_sticky(health: EngineHealth, exit_process: Callable[[int], object] = os._exit) -> None:
    """End the process with :data:`STICKY_EXIT_CODE` when ``health`` says the engine is broken
    for good, so the supervisor (BentoML's arbiter, Kubernetes) starts a fresh one.

    ``os._exit`` by default: a normal exit would wait for the threads still in the broken
    engine. Cases in flight are cut off; the front answers them 503 (the runner is gone).
    """
    reason = health.sticky_reason
    if reason is None:
        return
    logger.critical(
        "engine broken for good (%s); exiting with status %d so the process is restarted",
        reason,
        STICKY_EXIT_CODE,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    exit_process(STICKY_EXIT_CODE)
