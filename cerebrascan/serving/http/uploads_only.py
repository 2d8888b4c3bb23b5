"""Refuse multipart file fields that are not uploaded files.

BentoML's multipart parser (``MultipartSerde.ensure_file``) downloads a URL when a file field
arrives as text. A server handling medical images must not fetch addresses chosen by a client
(server-side request forgery), so the hook is replaced by one that accepts uploads only. A body
that is not valid multipart (starlette raises its own 400 there, which BentoML answers as a 500)
is refused as BentoML's ``BadInput``: a 400 naming the problem.
"""

from __future__ import annotations

import logging
from typing import Any

from bentoml.exceptions import BadInput
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)


async def _uploaded_file_only(obj: Any) -> UploadFile:
    if isinstance(obj, UploadFile):
        return obj
    raise BadInput(
        "file fields (t1n, t1c, t2w, t2f) must be uploaded files; text values and URLs are "
        "not accepted and never fetched"
    )


def _refusing_malformed_multipart(parse: Any) -> Any:
    async def parse_request(self: Any, request: Any, cls: Any) -> Any:
        try:
            return await parse(self, request, cls)
        except HTTPException as exc:
            if not 400 <= exc.status_code < 500:
                raise
            raise BadInput(f"request body is not valid multipart/form-data: {exc.detail}") from None

    parse_request.cerebrascan_wrapped = True  # type: ignore[attr-defined]
    return parse_request


def refuse_remote_file_fields() -> None:
    """Install the uploads-only check into BentoML's multipart parser (idempotent)."""
    from _bentoml_impl.serde import MultipartSerde

    MultipartSerde.ensure_file = staticmethod(_uploaded_file_only)  # type: ignore[method-assign]
    if not getattr(MultipartSerde.parse_request, "cerebrascan_wrapped", False):
        MultipartSerde.parse_request = _refusing_malformed_multipart(  # type: ignore[method-assign]
            MultipartSerde.parse_request
        )
    logger.debug("multipart file fields accept uploaded files only")
