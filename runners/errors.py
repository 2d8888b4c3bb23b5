"""Errors shared by every runner."""

from __future__ import annotations


class RunnerConfigError(RuntimeError):
    """The configured runner cannot be built on this machine (e.g. a missing provider)."""
