"""API keys: make a new one, hash it for the settings file, and look a presented key up."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from cerebrascan.serving.settings import DEFAULT_TENANT, ApiKeyEntry, Role

KEY_PREFIX = "cs_"
ROLE_RANK: dict[str, int] = {"reader": 1, "admin": 2}


def hash_key(key: str) -> str:
    """Hex SHA-256 of an API key: what the settings store instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(name: str, role: Role, tenant: str = DEFAULT_TENANT) -> tuple[str, ApiKeyEntry]:
    """A fresh random key (256 bits) and the settings entry that accepts it.

    Args:
        name: who will hold the key; logged with each request it authorises.
        role: ``reader`` or ``admin``.
        tenant: the site or project whose studies and patients the key reaches.

    Raises:
        pydantic.ValidationError: a tenant name outside ``[a-z0-9][a-z0-9_-]{0,63}``.

    Returns:
        The key (show it once, never store it) and its :class:`ApiKeyEntry`.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, ApiKeyEntry(name=name, role=role, sha256=hash_key(key), tenant=tenant)


def role_allows(held: str, needed: str) -> bool:
    """Whether a key of role ``held`` may use a route that needs ``needed`` (admin > reader)."""
    return ROLE_RANK[held] >= ROLE_RANK[needed]


class KeyRing:
    """The configured keys, looked up by the hash of a presented key in constant time.

    Args:
        entries: the ``auth.api_keys`` settings.
    """

    def __init__(self, entries: Sequence[ApiKeyEntry]) -> None:
        self._entries = tuple(entries)

    def match(self, presented: str) -> ApiKeyEntry | None:
        """The entry whose hash matches ``presented``, or None."""
        digest = hash_key(presented)
        found = None
        for entry in self._entries:
            # compare every entry so the time taken does not tell which one matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found
