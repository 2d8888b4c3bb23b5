"""Tenants kept apart on the HTTP routes: a study or a job of another tenant answers 404.

Every API key belongs to a tenant (``auth.api_keys[].tenant``; ``default`` when it names none,
and for every request when auth is off). :class:`StudyTenantGuard` checks each
``/studies/{study_id}/...`` request against the study's record before a route sees it: a study
is visible to the tenant that stored it (a study folder without a record only to ``default``).
A study the caller may not see gets the very answer an unknown id gets, from the guard, so the
answer tells nothing about whether the id exists. :class:`TaskTenantGuard` does the same for
the analysis jobs (``/analyze[/dicom]/status|get|retry|cancel?task_id=``): it remembers which
tenant submitted each job. Patient timelines are scoped in the store itself (a patient id is
looked up within the caller's tenant: :mod:`cerebrascan.serving.http.patients`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import parse_qs

import anyio.to_thread

from cerebrascan.serving.asgi import ASGIApp, Message, Receive, Scope, Send
from cerebrascan.serving.http.auth import caller_of, route_need
from cerebrascan.store.artefacts import StudyArtefacts
from cerebrascan.store.models import DEFAULT_TENANT
from cerebrascan.store.records import StudyRepository

logger = logging.getLogger(__name__)

STUDY_PATH = re.compile(r"^/studies/([0-9a-f]{32})(?:/.*)?$")
"""A path of one stored study (a malformed id is left to the route: 400)."""
AUDIT_STUDY_KEY = "audit_study"
"""``scope["state"]`` key: ``(study_id, stored patient key or None)`` of a visible study, for
the audit trail."""
TASK_PATH = re.compile(r"^/analyze(?:/dicom)?/(submit|status|get|retry|cancel)$")
TASK_STARTING = frozenset({"submit", "retry"})
MAX_REMEMBERED_TASKS = 100_000
"""Job owners remembered (the oldest forgotten first); BentoML keeps a job far fewer."""


async def _answer(send: Send, status: int, payload: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def unknown_study_error(study_id: str) -> dict[str, str]:
    """The answer to a study id the caller cannot see: unknown, or another tenant's."""
    return {"error": f"no segmentation or record for study {study_id}"}


class StudyTenantGuard:
    """Answer 404 to a ``/studies/{id}/...`` request for a study of another tenant, or none.

    Args:
        app: the ASGI app.
        repository: returns the open study store (opened on first use).
        artefacts: the studies' folders (a folder without a record is the default tenant's:
            studies stored before tenants, or files written before their record).
    """

    def __init__(
        self, app: ASGIApp, repository: Callable[[], StudyRepository], artefacts: StudyArtefacts
    ) -> None:
        self.app = app
        self.repository = repository
        self.artefacts = artefacts

    def visible(self, study_id: str, tenant: str) -> tuple[bool, str | None]:
        """Whether ``tenant`` may see ``study_id``, and the study's stored patient key."""
        owner = self.repository().study_owner(study_id)
        if owner is not None:
            return owner[0] == tenant, owner[1]
        return tenant == DEFAULT_TENANT and (self.artefacts.root / study_id).is_dir(), None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        match = STUDY_PATH.match(path)
        # the viewer page holds no study data and answers any well-formed id alike
        if match is None or route_need(path, scope.get("method")) == "public":
            await self.app(scope, receive, send)
            return
        study_id = match.group(1)
        caller = caller_of(scope)
        seen, patient_key = await anyio.to_thread.run_sync(self.visible, study_id, caller.tenant)
        if not seen:
            await _answer(send, 404, unknown_study_error(study_id))
            return
        scope.setdefault("state", {})[AUDIT_STUDY_KEY] = (study_id, patient_key)
        await self.app(scope, receive, send)


class TaskOwners:
    """Which tenant submitted each analysis job (in memory: BentoML empties its task store when
    the server starts, so a job never outlives this process)."""

    def __init__(self, limit: int = MAX_REMEMBERED_TASKS) -> None:
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def remember(self, task_id: str, tenant: str) -> None:
        """Record that ``tenant`` submitted ``task_id``."""
        with self._lock:
            self._owners[task_id] = tenant
            while len(self._owners) > self._limit:
                self._owners.popitem(last=False)

    def may_see(self, task_id: str, tenant: str) -> bool:
        """Whether ``tenant`` may see ``task_id``: its own job, or one nobody here submitted
        (BentoML answers that one as unknown)."""
        with self._lock:
            owner = self._owners.get(task_id)
        return owner is None or owner == tenant


class TaskTenantGuard:
    """Answer a job route for another tenant's job as BentoML answers an unknown ``task_id``
    (404 ``{"error": "task_id not found"}``), and remember who submitted each new job.

    Args:
        app: the ASGI app.
        owners: the jobs' tenants (one per process).
    """

    def __init__(self, app: ASGIApp, owners: TaskOwners | None = None) -> None:
        self.app = app
        self.owners = owners if owners is not None else TaskOwners()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = TASK_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        tenant = caller_of(scope).tenant
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        task_id = (query.get("task_id") or [None])[0]
        if task_id is not None and not self.owners.may_see(task_id, tenant):
            await _answer(send, 404, {"error": "task_id not found"})
            return
        if match.group(1) not in TASK_STARTING:
            await self.app(scope, receive, send)
            return
        status: list[int] = []
        body = bytearray()

        async def remembering(message: Message) -> None:
            # the new job's id is recorded before the client can read it
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            elif message["type"] == "http.response.body" and status and status[0] == 200:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self._remember(bytes(body), tenant)
            await send(message)

        await self.app(scope, receive, remembering)

    def _remember(self, body: bytes, tenant: str) -> None:
        try:
            task_id = json.loads(body).get("task_id")
        except (ValueError, AttributeError):
            logger.warning("a job was started but its answer holds no task_id")
            return
        if isinstance(task_id, str):
            self.owners.remember(task_id, tenant)
