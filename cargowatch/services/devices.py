"""Registering devices (``POST /v1/devices``; trips register the devices they name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.clock import Clock
from core.errors import InvalidInput
from telemetry.parse import parse_topic
from telemetry.store import Store

DEVICE_KINDS = ("gps", "lock", "combo")


class DeviceService:
    """Stores device documents and tells the pipeline which device ids are known."""

    def __init__(
        self, store: Store, clock: Clock, *, prefix: str, known: Callable[[str], None]
    ) -> None:
        self._store = store
        self._clock = clock
        self._prefix = prefix
        self._known = known

    def register(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or update a device; the fields given replace the stored ones."""
        device_id = str(doc.get("device_id") or "")
        # The same rule as for the topics the device publishes on.
        if parse_topic(f"{self._prefix}/{device_id}/position", self._prefix) is None:
            raise InvalidInput(
                "device_id must be 1-64 chars of [A-Za-z0-9_.:-]", device_id=device_id
            )
        kind = doc.get("kind") or "combo"
        if kind not in DEVICE_KINDS:
            raise InvalidInput("kind must be gps, lock or combo", kind=kind)
        existing = self._store.get_device(device_id) or {}
        stored = {
            **existing,
            **{k: v for k, v in doc.items() if v is not None},
            "device_id": device_id,
            "kind": kind,
            "created_at": existing.get("created_at", self._clock.now_ms()),
        }
        self._store.put_device(stored)
        self._known(device_id)
        return stored

    def ensure(self, device_id: str, shipper: str | None) -> None:
        """Register a device a trip names unless it is registered already."""
        if self._store.get_device(device_id) is None:
            self.register(
                {"device_id": device_id, "kind": guess_kind(device_id), "shipper": shipper}
            )
        else:
            self._known(device_id)


def guess_kind(device_id: str) -> str:
    """A device first seen in a trip: its kind from its name (``…lock…``, ``…gps…``)."""
    low = device_id.lower()
    if "lock" in low:
        return "lock"
    if "gps" in low:
        return "gps"
    return "combo"
