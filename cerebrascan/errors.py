"""Errors that reach a client, each carrying the HTTP status it maps to."""

from __future__ import annotations


class InputError(ValueError):
    """The request's data cannot be analysed; the message names the problem.

    Args:
        message: what is wrong, naming the field and the bad value.
        status_code: 400 (malformed), 404 (unknown id), 413 (too large) or 422 (well-formed but
            unusable).
        field: the request field at fault, when there is one.
    """

    def __init__(self, message: str, *, status_code: int = 422, field: str | None = None) -> None:
        if not 400 <= status_code < 500:
            raise ValueError(f"InputError status_code must be 4xx, got {status_code}")
        prefix = f"{field}: " if field else ""
        super().__init__(prefix + message)
        self.status_code = status_code
        self.field = field


class RunnerUnavailableError(RuntimeError):
    """The runner service cannot be reached (not started yet, restarting, or gone): the study
    is not analysed and may be retried; HTTP 503, gRPC UNAVAILABLE.

    Args:
        message: what was tried and where, without patient data.
    """

    status_code = 503


class StorageFullError(RuntimeError):
    """The data folder has no room for a study's files (ENOSPC, EDQUOT, or EFBIG from a file
    size limit): the study is not stored, its partial files are removed, and it may be retried
    once there is space; HTTP 507.

    Args:
        message: what could not be written, without patient data.
    """

    status_code = 507
