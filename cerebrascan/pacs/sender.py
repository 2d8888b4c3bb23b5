"""Send DICOM instances to a PACS (network I/O): DICOMweb STOW-RS or DIMSE C-STORE.

Both answer, per instance, whether the target stored it. A target that cannot be reached,
refuses the association or the request, or answers something that is not a STOW-RS response
raises :class:`SendError` (the route answers 502 with its message).
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom

from cerebrascan.pacs.settings import DicomWebTarget, DimseTarget
from cerebrascan.pacs.transport import disable_nagle
from schemas.pacs import OutputKind, SentObject

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
# DICOM JSON tags of the STOW-RS response (PS3.18 10.5.3)
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


class SendError(RuntimeError):
    """The target is unreachable or refused the whole send (HTTP 502 at the route)."""


@dataclass(frozen=True)
class OutgoingInstance:
    """One DICOM file to send."""

    kind: OutputKind
    data: bytes
    """The DICOM file (meta header included)."""
    sop_class_uid: str
    sop_instance_uid: str

    @classmethod
    def of(cls, kind: OutputKind, data: bytes) -> OutgoingInstance:
        """``data`` with the UIDs read from its header."""
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        return cls(kind, data, str(header.SOPClassUID), str(header.SOPInstanceUID))


def _sent(instance: OutgoingInstance, stored: bool, status: str) -> SentObject:
    return SentObject(
        kind=instance.kind,
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        stored=stored,
        status=status,
    )


def _multipart(instances: Sequence[OutgoingInstance]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        b"--"
        + boundary.encode()
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + i.data
        + b"\r\n"
        for i in instances
    ]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _uids_in(answer: dict[str, Any], sequence: str) -> dict[str, str]:
    """SOPInstanceUID -> reason (hex status, or '') of the items of a response sequence."""
    found: dict[str, str] = {}
    for item in (answer.get(sequence) or {}).get("Value") or []:
        uids = (item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
        reasons = (item.get(FAILURE_REASON) or item.get(WARNING_REASON) or {}).get("Value") or []
        if uids:
            found[str(uids[0])] = f"0x{int(reasons[0]):04X}" if reasons else ""
    return found


def stow_rs(target: DicomWebTarget, instances: Sequence[OutgoingInstance]) -> list[SentObject]:
    """Store ``instances`` with one STOW-RS request to ``{target.url}/studies``.

    Raises:
        SendError: unreachable, an HTTP status other than 200/202/409, or no STOW-RS answer.
    """
    body, content_type = _multipart(instances)
    headers = {"Content-Type": content_type, "Accept": DICOM_JSON}
    if target.auth_header_env is not None:
        value = os.environ.get(target.auth_header_env)
        if not value:
            raise SendError(
                f"the target's Authorization header variable {target.auth_header_env} is not set"
            )
        headers["Authorization"] = value
    url = target.url.rstrip("/") + "/studies"
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=target.timeout_seconds)
    except httpx.HTTPError as exc:
        raise SendError(f"STOW-RS to {url} failed: {type(exc).__name__}: {exc}") from None
    # 200 all stored, 202 some stored, 409 none stored (PS3.18 10.5.3.1)
    if response.status_code not in (200, 202, 409):
        raise SendError(
            f"STOW-RS to {url} answered HTTP {response.status_code}: {response.text[:300]}"
        )
    try:
        answer = response.json()
    except ValueError:
        raise SendError(
            f"STOW-RS to {url} answered HTTP {response.status_code} without a DICOM JSON body"
        ) from None
    if isinstance(answer, list):  # some servers wrap the one dataset in an array
        answer = answer[0] if answer else {}
    if not isinstance(answer, dict):
        raise SendError(f"STOW-RS to {url} answered a body that is not a DICOM JSON dataset")
    stored = _uids_in(answer, REFERENCED_SOP_SEQUENCE)
    failed = _uids_in(answer, FAILED_SOP_SEQUENCE)
    results = []
    for instance in instances:
        uid = instance.sop_instance_uid
        if uid in stored and uid not in failed:
            results.append(_sent(instance, True, "stored"))
        else:
            reason = failed.get(uid)
            status = "not in the STOW-RS response" if reason is None else f"failed {reason}"
            results.append(_sent(instance, False, status.strip()))
    return results


def c_store(
    target: DimseTarget, instances: Sequence[OutgoingInstance], calling_ae: str
) -> list[SentObject]:
    """Store ``instances`` with C-STORE over one association with the target.

    Raises:
        SendError: the association was rejected, aborted or could not be opened.
    """
    try:  # the `pacs` extra; the service runs without it (DICOMweb targets only)
        from pynetdicom import AE, evt
    except ImportError:
        raise SendError("DIMSE targets need pynetdicom: pip install 'cerebrascan[pacs]'") from None
    datasets = [pydicom.dcmread(io.BytesIO(i.data)) for i in instances]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = target.timeout_seconds
    ae.connection_timeout = target.timeout_seconds
    for dataset in datasets:
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        contexts = {(c.abstract_syntax, tuple(c.transfer_syntax)) for c in ae.requested_contexts}
        if (str(dataset.SOPClassUID), (syntax,)) not in contexts:
            ae.add_requested_context(str(dataset.SOPClassUID), syntax)
    where = f"{target.called_ae}@{target.host}:{target.port}"
    association = ae.associate(
        target.host,
        target.port,
        ae_title=target.called_ae,
        evt_handlers=[(evt.EVT_CONN_OPEN, disable_nagle)],
    )
    if not association.is_established:
        state = "rejected" if association.is_rejected else "aborted or unreachable"
        raise SendError(f"DICOM association with {where} {state}")
    results = []
    try:
        for instance, dataset in zip(instances, datasets):
            try:
                status = association.send_c_store(dataset)
            except (ValueError, RuntimeError) as exc:  # no accepted context for it
                results.append(_sent(instance, False, f"not sent: {exc}"))
                continue
            code = getattr(status, "Status", None)
            if code is None:  # no answer: the association was aborted or timed out
                results.append(_sent(instance, False, "no response"))
                continue
            # success and warnings (0xB000, 0xB007, 0xB006) store the instance
            results.append(_sent(instance, code == 0 or code >> 12 == 0xB, f"0x{code:04X}"))
    finally:
        if association.is_established:
            association.release()
    return results


def send_instances(
    target: DicomWebTarget | DimseTarget,
    instances: Sequence[OutgoingInstance],
    *,
    calling_ae: str,
) -> list[SentObject]:
    """Send ``instances`` to ``target`` (STOW-RS or C-STORE); per instance, whether stored.

    Raises:
        SendError: the target is unreachable or refused the whole send.
    """
    if isinstance(target, DicomWebTarget):
        return stow_rs(target, instances)
    return c_store(target, instances, calling_ae)
