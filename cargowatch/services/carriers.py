"""Carriers: the haulage companies trips name, with the contacts the desk calls
(``PUT /v1/carriers/{carrier_id}``; contract v2 §5)."""

from __future__ import annotations

from typing import Any

from core.clock import Clock
from core.errors import InvalidInput
from telemetry.store import Store

CONTACT_FIELDS = ("name", "role", "phone", "email")
MAX_CONTACTS = 50


class CarrierService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def put(self, carrier_id: str, name: str, contacts: list[dict[str, Any]]) -> dict[str, Any]:
        """Create or replace a carrier (the whole contact list at once)."""
        if not name.strip():
            raise InvalidInput("a carrier needs a name", carrier_id=carrier_id)
        if len(contacts) > MAX_CONTACTS:
            raise InvalidInput(f"at most {MAX_CONTACTS} contacts", carrier_id=carrier_id)
        kept = [{k: c.get(k) for k in CONTACT_FIELDS} for c in contacts]
        if any(not (c["phone"] or c["email"]) for c in kept):
            raise InvalidInput("every contact needs a phone or an e-mail", carrier_id=carrier_id)
        now = self._clock.now_ms()
        old = self._store.get_carrier(carrier_id)
        doc = {
            "carrier_id": carrier_id,
            "name": name,
            "contacts": kept,
            "created_at": (old or {}).get("created_at", now),
            "updated_at": now,
        }
        self._store.put_carrier(doc)
        return doc
