"""Patient identifiers: pseudonymous ids only, never personal names.

With a key configured (``Settings.patient_id_key``) every patient id is stored as a keyed
HMAC-SHA256, never as sent: a name-like one of its normalised form, any other of the id itself.
Without a key, an id that looks like a personal name (whitespace, ``^`` or ``,`` as in DICOM
``DOE^JOHN``, a capitalised letters-only word such as ``Smith``, or no digit at all) is
refused, and other ids (1-64 characters of ``[A-Za-z0-9._-]``) are stored as sent. Error
messages never repeat the id (it may be personal data).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

PSEUDONYM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HASHED_PATTERN = re.compile(r"^hmac-[0-9a-f]{64}$")
HASH_PREFIX = "hmac-"
MAX_PATIENT_ID_CHARS = 128
NAME_SEPARATORS = frozenset("^,'")
_TOKEN_SPLIT = re.compile(r"[._-]+")


class PatientIdError(ValueError):
    """A patient id that cannot be stored; the message names the rule, never the id."""


def looks_like_name(value: str) -> bool:
    """Whether ``value`` may be a personal name rather than a pseudonym.

    Args:
        value: a patient id as sent by a client.

    Returns:
        True for whitespace or ``^ , '`` anywhere, a letters-only word with both upper- and
        lower-case letters (``Smith``, ``JohnSmith``), or an id without any digit.
    """
    if any(ch.isspace() or ch in NAME_SEPARATORS for ch in value):
        return True
    tokens = [token for token in _TOKEN_SPLIT.split(value) if token]
    if any(t.isalpha() and not t.isupper() and not t.islower() for t in tokens):
        return True
    return not any(ch.isdigit() for ch in value)


def hash_patient_id(value: str, key: bytes) -> str:
    """Keyed HMAC-SHA256 of a name-like id: ``hmac-<64 hex>``.

    The value is NFKC-normalised, case-folded and its whitespace collapsed first, so
    ``"John  Smith"`` and ``"john smith"`` give the same key.
    """
    normalised = " ".join(unicodedata.normalize("NFKC", value).casefold().split())
    digest = hmac.new(key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest


def hash_pseudonym(value: str, key: bytes) -> str:
    """Keyed HMAC-SHA256 of a pseudonymous (not name-like) id as sent: ``hmac-<64 hex>``.

    Case is kept (``PAT-1`` and ``pat-1`` stay two patients, as they are without a key).
    """
    digest = hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest


def normalise_patient_id(value: str, key: bytes | None) -> str:
    """The key a patient id is stored under.

    Args:
        value: the id sent by the client.
        key: HMAC key of patient ids; None stores pseudonymous ids as sent and refuses
            name-like ones.

    Returns:
        An already hashed ``hmac-...`` key itself; with ``key``, the keyed hash of any other
        id; without, a pseudonymous id itself.

    Raises:
        PatientIdError: empty, over ``MAX_PATIENT_ID_CHARS``, name-like without a key, or
            characters outside ``[A-Za-z0-9._-]``.
    """
    if not isinstance(value, str) or not value.strip():
        raise PatientIdError("patient_id must be a non-empty string")
    if len(value) > MAX_PATIENT_ID_CHARS:
        raise PatientIdError(
            f"patient_id has {len(value)} characters; at most {MAX_PATIENT_ID_CHARS} are allowed"
        )
    if HASHED_PATTERN.match(value):
        return value
    if looks_like_name(value):
        if key is None:
            raise PatientIdError(
                "patient_id looks like a personal name (whitespace, '^' or ',', a capitalised "
                "word, or no digit); send a pseudonymous id such as 'PAT-0001', or configure "
                "patient_id_key so that such ids are stored as a keyed hash"
            )
        return hash_patient_id(value, key)
    if not PSEUDONYM_PATTERN.match(value):
        bad = sorted({ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch in "._-"))})
        detail = f"characters {bad[:5]} are not allowed" if bad else "it must not start with . _ -"
        raise PatientIdError(
            f"patient_id must be 1-64 characters of [A-Za-z0-9._-] starting with a letter or "
            f"digit; {detail} (length {len(value)})"
        )
    return hash_pseudonym(value, key) if key is not None else value
