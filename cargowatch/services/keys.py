"""API keys: made by an admin (``POST /v1/keys``) or from ``CARGOWATCH_ADMIN_KEY``.

Only a SHA-256 of each secret is stored; a key is found by that hash (a primary-key read)
and the stored hash is compared again with ``hmac.compare_digest``, so no comparison of
secret material depends on how much of it matched. A key has a ``name`` (who acts, in every
alarm history entry: contract v2 §5) unique among the keys not revoked. Revocation is a
column of the store read on every request, so every process refuses a revoked key at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from typing import Any

from core.clock import Clock
from core.errors import Conflict, InvalidInput, NotFound
from telemetry.store import Store

ROLES = ("admin", "desk", "fleet", "shipper")
#: A name is shown and recorded as given: 1-64 characters, no control characters.
NAME_RE = re.compile(r"^(?=.*\S)[^\x00-\x1f\x7f]{1,64}$")
#: ``last_used_at`` is written at most this often per key and process (a read per request
#: is cheap, a write per request is not).
TOUCH_EVERY_MS = 60_000


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_name(doc: dict[str, Any]) -> str:
    """A key's name; keys made before names existed go by their label, else their id."""
    return str(doc.get("name") or doc.get("label") or doc.get("key_id"))


class KeyService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._touched: dict[str, int] = {}
        self._lock = threading.Lock()

    def ensure(self, secret: str, role: str, shipper: str | None, name: str) -> None:
        """Store ``secret`` as a key of ``role`` unless it is stored already."""
        if self._store.get_api_key(hash_key(secret)) is None:
            self._store.put_api_key(self._doc(secret, role, shipper, name))

    def create(self, role: str, shipper: str | None, name: str | None = None) -> dict[str, Any]:
        """A new key; the secret is in the answer only. 409 for a name in use."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", role=role)
        if (role == "shipper") != bool(shipper):
            raise InvalidInput("a shipper key needs a shipper; other roles take none", role=role)
        if name is not None:
            if not NAME_RE.match(name):
                raise InvalidInput(
                    "a key name is 1-64 characters, no control characters", name=name
                )
            if any(key_name(k) == name for k in self.list(active=True)):
                raise Conflict("a key with this name exists; revoke it first", name=name)
        secret = "cw_" + secrets.token_urlsafe(24)
        doc = self._doc(secret, role, shipper, name)
        self._store.put_api_key(doc)
        return {"key": secret, **self.view(doc)}

    def lookup(self, secret: str) -> dict[str, Any] | None:
        """The principal of a secret (``key_id``, ``name``, ``role``, ``shipper``), or None
        for an unknown or revoked key. Records the use (at most once a minute)."""
        wanted = hash_key(secret)
        doc = self._store.get_api_key(wanted)
        if doc is None or not hmac.compare_digest(str(doc.get("key_hash", "")), wanted):
            return None
        if doc.get("revoked_at") is not None or doc.get("revoked"):
            return None
        self._touch(wanted)
        return {
            "key_id": doc["key_id"],
            "name": key_name(doc),
            "role": doc["role"],
            "shipper": doc.get("shipper"),
        }

    def list(self, *, active: bool = False) -> list[dict[str, Any]]:
        """Every key as ``view`` (never the secret or its hash), oldest first."""
        docs = self._store.list_api_keys()
        return [self.view(d) for d in docs if not (active and d.get("revoked_at") is not None)]

    def revoke(self, key_id: str) -> None:
        """Revoke the key (``NotFound`` without one); it stays listed, marked revoked."""
        if not self._store.revoke_api_key(key_id, self._clock.now_ms()):
            raise NotFound("no such key", key_id=key_id)

    def names(self, roles: tuple[str, ...]) -> set[str]:
        """Names of the keys of these roles not revoked (whom an alarm may be assigned to)."""
        return {k["name"] for k in self.list(active=True) if k["role"] in roles}

    @staticmethod
    def view(doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "key_id": doc["key_id"],
            "name": key_name(doc),
            "role": doc.get("role"),
            "shipper": doc.get("shipper"),
            "created_at": doc.get("created_at"),
            "last_used_at": doc.get("last_used_at"),
            "revoked_at": doc.get("revoked_at"),
        }

    def _touch(self, key_hash: str) -> None:
        now = self._clock.now_ms()
        with self._lock:
            last = self._touched.get(key_hash)
            if last is not None and now - last < TOUCH_EVERY_MS:
                return
            self._touched[key_hash] = now
        try:
            self._store.touch_api_key(key_hash, now)
        except Exception:  # a use not recorded must never refuse a valid key
            with self._lock:
                self._touched.pop(key_hash, None)

    def _doc(self, secret: str, role: str, shipper: str | None, name: str | None) -> dict[str, Any]:
        key_id = "key_" + secrets.token_hex(6)
        return {
            "key_hash": hash_key(secret),
            "key_id": key_id,
            "role": role,
            "shipper": shipper,
            "name": name or key_id,
            "created_at": self._clock.now_ms(),
        }
