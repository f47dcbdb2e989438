"""Registering devices (``POST /v1/devices``; trips register the devices they name) and
their MQTT credentials (contract §2).

A new device registered through the API gets an MQTT password (user name = device id),
answered once and never stored by cargowatch: on a broker written by ``cargowatch
broker-config mosquitto`` (``--mqtt …?dynsec=1``) it is applied at once through the
broker's dynamic-security plugin, which also binds the device to its own topics.
``credentials`` issues a new password (old sessions are disconnected), ``revoke`` deletes
the device's broker client and marks the device revoked. In bus mode (``serve --bus``), on a
NATS server written by ``cargowatch broker-config nats``, the same happens to the server's
device users (``cargowatch.busmode.credentials``). Without such a broker the password is still
issued, but only a broker configured to check it enforces it (``mqtt_credentials_applied``
says which)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from cargowatch.settings import Settings
from core.clock import Clock
from core.errors import InvalidInput, NotFound
from telemetry.dynsec import Dynsec, new_password
from telemetry.ingest import BrokerAddress
from telemetry.mqtt import tls_setup
from telemetry.parse import parse_topic
from telemetry.store import Store

DEVICE_KINDS = ("gps", "lock", "combo")


class DeviceCredentials(Protocol):
    """Where device passwords take effect: a Mosquitto's dynamic security, a NATS server's
    users."""

    def apply(self, device_id: str, password: str | None, *, new: bool) -> bool:
        """Set (``new``: a device the broker may not know yet) or, with ``None``, remove the
        device's password; True when the broker now enforces it."""
        ...


class DynsecCredentials:
    """``DeviceCredentials`` through Mosquitto's dynamic-security plugin."""

    def __init__(self, dynsec: Dynsec) -> None:
        self._dynsec = dynsec

    def apply(self, device_id: str, password: str | None, *, new: bool) -> bool:
        if password is None:
            self._dynsec.delete(device_id)
        elif new:
            self._dynsec.create(device_id, password)
        else:
            self._dynsec.rotate(device_id, password)
        return True


class DeviceService:
    """Stores device documents and tells the pipeline which device ids are known."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        prefix: str,
        known: Callable[[str], None],
        broker: DeviceCredentials | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._prefix = prefix
        self._known = known
        self._broker = broker

    def register(self, doc: dict[str, Any], *, issue: bool = True) -> dict[str, Any]:
        """Create or update a device; the fields given replace the stored ones. A new
        device gets its MQTT password (``issue``; not for devices a trip names, which get
        theirs from ``credentials``)."""
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
        password, applied = None, False
        if issue and (not existing or existing.get("revoked_at")):
            # A new device: its password is applied to the broker before it is stored.
            password, applied = self._apply(device_id, new=True)
        stored = {
            **existing,
            **{k: v for k, v in doc.items() if v is not None},
            "device_id": device_id,
            "kind": kind,
            "created_at": existing.get("created_at", self._clock.now_ms()),
        }
        if password is not None:
            stored.pop("revoked_at", None)
            stored["credentials_at"] = self._clock.now_ms()
        self._store.put_device(stored)
        self._known(device_id)
        if password is not None:
            return {**stored, **self._issued(password, applied)}
        return stored

    def credentials(self, device_id: str) -> dict[str, Any]:
        """A new MQTT password for a registered device (the old one stops working)."""
        doc = self._store.get_device(device_id)
        if doc is None:
            raise NotFound("no such device", device_id=device_id)
        fresh = bool(doc.get("revoked_at")) or not doc.get("credentials_at")
        password, applied = self._apply(device_id, new=fresh)
        if doc.get("revoked_at"):
            doc = {k: v for k, v in doc.items() if k != "revoked_at"}
        self._store.put_device({**doc, "credentials_at": self._clock.now_ms()})
        return {"device_id": device_id, **self._issued(password, applied)}

    def revoke(self, device_id: str) -> None:
        """The device may no longer connect (its broker client is deleted)."""
        doc = self._store.get_device(device_id)
        if doc is None:
            raise NotFound("no such device", device_id=device_id)
        if self._broker is not None:
            self._broker.apply(device_id, None, new=False)
        self._store.put_device({**doc, "revoked_at": self._clock.now_ms()})

    def _apply(self, device_id: str, *, new: bool) -> tuple[str, bool]:
        password = new_password()
        applied = self._broker is not None and self._broker.apply(device_id, password, new=new)
        return password, applied

    def _issued(self, password: str, applied: bool) -> dict[str, Any]:
        return {"mqtt_password": password, "mqtt_credentials_applied": applied}

    def ensure(self, device_id: str, shipper: str | None) -> None:
        """Register a device a trip names unless it is registered already."""
        if self._store.get_device(device_id) is None:
            self.register(
                {"device_id": device_id, "kind": guess_kind(device_id), "shipper": shipper},
                issue=False,
            )
        else:
            self._known(device_id)


def device_broker(settings: Settings) -> DeviceCredentials | None:
    """The broker that checks device credentials: the ``--mqtt`` URL that ``broker-config
    mosquitto`` printed (``dynsec=1``), used with the engine's own credentials; in bus mode the
    NATS server, if ``broker-config nats`` configured it (asked on first use)."""
    if settings.bus_url:
        from cargowatch.busmode.credentials import NatsDeviceUsers

        return NatsDeviceUsers(settings.bus_url)
    if not settings.mqtt_url:
        return None
    address = BrokerAddress.parse(settings.mqtt_url)
    if not address.dynsec:
        return None
    return DynsecCredentials(
        Dynsec(
            address.host,
            address.port,
            address.username or "",
            address.password or "",
            client_id=address.client_id or settings.client_id,
            prefix=settings.topic_prefix,
            tls=tls_setup(settings.mqtt_ca) if address.tls else None,
        )
    )


def guess_kind(device_id: str) -> str:
    """A device first seen in a trip: its kind from its name (``…lock…``, ``…gps…``)."""
    low = device_id.lower()
    if "lock" in low:
        return "lock"
    if "gps" in low:
        return "gps"
    return "combo"
