"""API keys: made by an admin (``POST /v1/keys``) or from ``CARGOWATCH_ADMIN_KEY``; only a
SHA-256 of each secret is stored."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from core.clock import Clock
from core.errors import InvalidInput
from telemetry.store import Store

ROLES = ("admin", "desk", "fleet", "shipper")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def ensure(self, secret: str, role: str, shipper: str | None, label: str) -> None:
        """Store ``secret`` as a key of ``role`` unless it is stored already."""
        if self._store.get_api_key(hash_key(secret)) is None:
            self._store.put_api_key(self._doc(secret, role, shipper, label))

    def create(self, role: str, shipper: str | None, label: str | None = None) -> dict[str, Any]:
        """A new key; the secret is in the answer only."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", role=role)
        if (role == "shipper") != bool(shipper):
            raise InvalidInput("a shipper key needs a shipper; other roles take none", role=role)
        secret = "cw_" + secrets.token_urlsafe(24)
        doc = self._doc(secret, role, shipper, label)
        self._store.put_api_key(doc)
        return {"key": secret, "key_id": doc["key_id"], "role": role, "shipper": shipper}

    def lookup(self, secret: str) -> dict[str, Any] | None:
        """The principal of a secret, or None for an unknown or revoked key."""
        doc = self._store.get_api_key(hash_key(secret))
        if doc is None or doc.get("revoked"):
            return None
        return {"key_id": doc["key_id"], "role": doc["role"], "shipper": doc.get("shipper")}

    def _doc(
        self, secret: str, role: str, shipper: str | None, label: str | None
    ) -> dict[str, Any]:
        return {
            "key_hash": hash_key(secret),
            "key_id": "key_" + secrets.token_hex(6),
            "role": role,
            "shipper": shipper,
            "label": label,
            "created_at": self._clock.now_ms(),
        }
