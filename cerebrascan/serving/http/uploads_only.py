"""Refuse multipart file fields that are not uploaded files.

BentoML's multipart parser (``MultipartSerde.ensure_file``) downloads a URL when a file field
arrives as text. A server handling medical images must not fetch addresses chosen by a client
(server-side request forgery), so the hook is replaced by one that accepts uploads only.
"""

from __future__ import annotations

import logging
from typing import Any

from bentoml.exceptions import BadInput
from starlette.datastructures import UploadFile

logger = logging.getLogger(__name__)


async def _uploaded_file_only(obj: Any) -> UploadFile:
    if isinstance(obj, UploadFile):
        return obj
    raise BadInput(
        "file fields (t1n, t1c, t2w, t2f) must be uploaded files; text values and URLs are "
        "not accepted and never fetched"
    )


def refuse_remote_file_fields() -> None:
    """Install the uploads-only check into BentoML's multipart parser (idempotent)."""
    from _bentoml_impl.serde import MultipartSerde

    MultipartSerde.ensure_file = staticmethod(_uploaded_file_only)  # type: ignore[method-assign]
    logger.debug("multipart file fields accept uploaded files only")
