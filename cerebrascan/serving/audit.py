"""The audit trail of patient-linked reads and writes (issue 18, item 4).

:class:`AuditMiddleware` writes one record per request to an audited route (:data:`AUDITED`):
the key's name and tenant, the action, the route template, the study id and the patient's
pseudonym (:func:`~cerebrascan.store.audit.patient_pseudonym`, never the id sent), the time and
the answer's status. Routes leave what they know for it in ``scope["state"]``: the tenant guard
the study and its stored patient key, the timeline and patient routes the patient key, the
analysis routes the new study. The records go to the study store (``audit_events``,
:mod:`cerebrascan.store.audit`); a failed write is logged, never turned into a failed request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime

import anyio.to_thread

from cerebrascan.serving.asgi import ASGIApp, Message, Receive, Scope, Send
from cerebrascan.serving.http.auth import caller_of
from cerebrascan.serving.http.patients import AUDIT_PATIENT_KEY
from cerebrascan.serving.http.route_labels import RAW_PATH_KEY, route_template
from cerebrascan.serving.tenants import AUDIT_STUDY_KEY
from cerebrascan.store.audit import AuditEntry, AuditTrail, patient_pseudonym

logger = logging.getLogger(__name__)

_ID = r"[^/]+"
AUDITED: tuple[tuple[str, str, str], ...] = (
    ("POST", r"/analyze(/dicom)?(/submit)?", "analyze"),
    ("POST", r"/analyze(/dicom)?/retry", "analyze.retry"),
    ("GET", r"/analyze(/dicom)?/(status|get)", "job.read"),
    ("PUT", r"/analyze(/dicom)?/cancel", "job.cancel"),
    ("POST", r"/dicom/inspect", "dicom.inspect"),
    ("GET", rf"/studies/{_ID}", "study.read"),
    ("DELETE", rf"/studies/{_ID}", "study.delete"),
    ("GET", rf"/studies/{_ID}/segmentation", "segmentation.read"),
    ("GET", rf"/studies/{_ID}/artefacts/{_ID}", "artefact.read"),
    ("GET", rf"/studies/{_ID}/report(/overlay\.png)?", "report.read"),
    ("GET", rf"/studies/{_ID}/views/.+", "view.read"),
    ("POST", rf"/studies/{_ID}/views/jobs", "view.render"),
    ("GET", rf"/studies/{_ID}/dicom/(seg|sr|pdf)", "dicom.read"),
    ("POST", rf"/studies/{_ID}/dicom/send", "dicom.send"),
    ("GET", rf"/patients/{_ID}/timeline", "timeline.read"),
    ("DELETE", rf"/patients/{_ID}", "patient.delete"),
)
"""(method, path regex, action) of every patient-linked route; first match wins."""
_COMPILED = tuple((method, re.compile(f"^(?:{path})$"), action) for method, path, action in AUDITED)
_STUDY_IN_PATH = re.compile(r"^/studies/([0-9a-f]{32})(?:/|$)")


def audited_action(method: str, path: str) -> str | None:
    """The action ``method path`` is audited as, or None if it is not patient-linked."""
    for verb, pattern, action in _COMPILED:
        if method.upper() == verb and pattern.match(path):
            return action
    return None


def note_study(scope: Scope, study_id: str, patient_key: str | None) -> None:
    """Tell the audit record of this request which study (and stored patient key) it made."""
    scope.setdefault("state", {})[AUDIT_STUDY_KEY] = (study_id, patient_key)


class AuditMiddleware:
    """Write an audit record for every request to an audited route, whatever its outcome.

    Args:
        app: the ASGI app (inside the API-key check, which names the caller).
        trail: returns the audit trail (the study store's; opened on first use).
    """

    def __init__(self, app: ASGIApp, trail: Callable[[], AuditTrail]) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get(RAW_PATH_KEY, scope["path"])
        action = audited_action(scope.get("method", "GET"), path)
        if action is None:
            await self.app(scope, receive, send)
            return
        statuses: list[int] = []
        # read before the call: a mounted app replaces scope["app"] with itself as it routes
        routes = getattr(scope.get("app"), "routes", None)
        template = route_template(path, routes) if routes is not None else action

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            entry = self._entry(scope, path, action, template, statuses[0] if statuses else 500)
            await anyio.to_thread.run_sync(self._append, entry)

    def _entry(
        self, scope: Scope, path: str, action: str, template: str, status: int
    ) -> AuditEntry:
        caller = caller_of(scope)
        state = scope.get("state") or {}
        study_id: str | None = None
        patient_key: str | None = state.get(AUDIT_PATIENT_KEY)
        noted = state.get(AUDIT_STUDY_KEY)
        if noted is not None:
            study_id, patient_key = noted[0], noted[1] or patient_key
        else:
            # a refused or unknown study is still worth a line (who probed which id)
            in_path = _STUDY_IN_PATH.match(path)
            study_id = in_path.group(1) if in_path else None
        return AuditEntry(
            at=datetime.now(UTC),
            tenant=caller.tenant,
            key_name=caller.key_name,
            action=action,
            route=f"{scope.get('method', 'GET')} {template}",
            study_id=study_id,
            patient=patient_pseudonym(patient_key),
            status=status,
        )

    def _append(self, entry: AuditEntry) -> None:
        try:
            self.trail().append(entry)
        except Exception:  # the answer is sent: a failed audit write is logged loudly instead
            logger.exception(
                "audit record of %s (%s) could not be written", entry.action, entry.route
            )
