"""Errors of the analyzer host and the one-line descriptions it records in outcomes."""

from __future__ import annotations

from pydantic import ValidationError


class AnalyzerOptionsError(ValueError):
    """The request's ``options.analyzers`` cannot be used: an unknown analyzer name or options
    that fail the analyzer's ``options_model``."""


def describe_error(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"`` (just the type when the message is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_validation(exc: ValidationError) -> str:
    """Pydantic's errors as ``field.path: message`` joined by ``"; "``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors()
    )
