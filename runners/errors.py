"""Errors shared by every runner."""

from __future__ import annotations


class RunnerConfigError(RuntimeError):
    """The configured runner cannot be built on this machine (e.g. a missing provider)."""


class EngineOutputError(RuntimeError):
    """The engine returned logits that cannot be right (NaN or infinite values).

    Raised instead of turning them into labels: an uninitialised output buffer or an fp16
    overflow must fail the study, not produce a plausible-looking segmentation.
    """


class EngineCheckError(RuntimeError):
    """A model version's engine cannot serve: it does not build, or its answer to the reference
    tile has the wrong shape or non-finite values. Raised before the version serves anything
    (promotion, start-up), so the version in service keeps serving."""


class StickyEngineError(RuntimeError):
    """The engine is in a state it cannot leave in this process (a lost GPU context, or
    :data:`runners.engine_check.STICKY_FAILURES` consecutive failures): only a restart helps,
    so the runner process exits non-zero and its supervisor starts a fresh one."""
