"""``GET /audit?since=...&limit=...`` (admin): the caller's tenant's audit trail."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cerebrascan.serving.http.auth import caller_of
from cerebrascan.serving.http.openapi import Operation, QueryParameter, describes
from cerebrascan.store.audit import MAX_AUDIT_PAGE, AuditTrail
from schemas.audit import AuditPage, AuditRecord

DEFAULT_WINDOW = timedelta(days=1)


def _since(value: str | None) -> datetime:
    if value is None or value == "":
        return datetime.now(UTC) - DEFAULT_WINDOW
    try:
        # an unencoded "+01:00" arrives as " 01:00"; a space is never part of an ISO time
        parsed = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        raise ValueError(f"since {value[:40]!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return MAX_AUDIT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_AUDIT_PAGE:
        raise ValueError(f"limit {value[:20]!r} is not an integer in 1..{MAX_AUDIT_PAGE}")
    return int(value)


def audit_app(trail: Callable[[], AuditTrail]) -> Starlette:
    """Route ``GET /audit``; mount it at ``/`` (it serves exactly ``/audit``).

    Args:
        trail: returns the audit trail (opened on first use).
    """

    @describes(
        Operation(
            "The audit trail of patient-linked reads and writes (pseudonyms only), admin",
            response=AuditPage,
            query=(
                QueryParameter("since", "ISO 8601 time (default: 24 hours ago; naive is UTC)"),
                QueryParameter("limit", f"Most records, 1..{MAX_AUDIT_PAGE}"),
            ),
            errors=(400,),
        )
    )
    async def events(request: Request) -> Response:
        """The caller's tenant's audit records since ``since``, oldest first."""
        try:
            since = _since(request.query_params.get("since"))
            limit = _limit(request.query_params.get("limit"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        tenant = caller_of(request.scope).tenant
        entries = await run_in_threadpool(lambda: trail().since(tenant, since, limit=limit))
        page = AuditPage(
            events=[
                AuditRecord(
                    at=e.at,
                    tenant=e.tenant,
                    key_name=e.key_name,
                    action=e.action,
                    route=e.route,
                    study_id=e.study_id,
                    patient=e.patient,
                    status=e.status,
                )
                for e in entries
            ],
            next_since=entries[-1].at if len(entries) == limit else None,
        )
        return JSONResponse(page.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/audit", events, methods=["GET"])])
