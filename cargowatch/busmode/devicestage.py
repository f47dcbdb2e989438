"""Stage 1: a DEVICES partition → validated records re-keyed onto their trip's partition.

Per batch (in a thread: the store is synchronous): each message is validated
(``telemetry.parse``); unknown devices and bad input become dead letters, stored at once; each
record is keyed by the device's current trip — active first, else the next planned one — and
published on ``trip.{trip_partition(trip)}…`` (``telemetry.bus.rekey``). The consumer
acknowledges the batch only after every re-key publish is confirmed.

**A device changing trips.** The device → trip map is cached for ``ttl_s`` (5 s) and looked up
again on a miss; a trip created, changed or ended through the API also drops its devices from
the cache at once (``forget``, on the control subject). So a device moved to another trip is
re-keyed onto the new trip's partition within ``ttl_s`` at the latest (only a lost control
message leaves it to the TTL); messages re-keyed before stay with the old trip. A device on no
trip is keyed by its own id, so its fixes are still stored (by the trip partition that owns
that key), in order.

Dead letters are not de-duplicated: a batch redelivered after a failed re-key stores its dead
letters again (rare, and dead letters are a diagnostic, not telemetry).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from cargowatch.busmode.codec import encode, kind_of
from cargowatch.metrics import Metrics
from core.clock import Clock, SystemClock
from telemetry.bus.consumer import BusMessage
from telemetry.bus.rekey import Rekeyed
from telemetry.models import DeadLetter, DeadLetterReason, Fix, LockEvent
from telemetry.parse import MAX_DEAD_PAYLOAD_BYTES, parse_message, parse_topic
from telemetry.store import Store

PREFIX = "devices"  # the NATS server's mapping takes devices.*.* (telemetry.bus.config)
TRIP_TTL_S = 5.0
DEVICE_TTL_S = 5.0  # an unknown device is asked for again after this long


class DeviceStage:
    """Validation and trip lookup, shared by every device partition of one process."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        ttl_s: float = TRIP_TTL_S,
        monotonic: Any = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.ttl_s = ttl_s
        self._now = monotonic
        self._lock = threading.Lock()
        self._known: set[str] = set(store.device_ids())
        self._unknown: dict[str, float] = {}  # device id -> when to ask the store again
        self._trips: dict[str, tuple[str | None, float]] = {}  # device -> (trip, valid until)
        # Real time: the server's timestamp of the message is when it was received, the same
        # on every redelivery. An accelerated clock (simulations) stamps its own time.
        self._server_time = isinstance(clock, SystemClock)

    # -- caches -----------------------------------------------------------------------------
    def forget(self, device_ids: Iterable[str]) -> None:
        """A trip of these devices changed: look their trip up again on the next message."""
        with self._lock:
            for d in device_ids:
                self._trips.pop(d, None)
                self._unknown.pop(d, None)

    def known(self, device_id: str) -> bool:
        if device_id in self._known:
            return True
        now = self._now()
        with self._lock:
            retry = self._unknown.get(device_id)
        if retry is not None and retry > now:
            return False
        found = self.store.get_device(device_id) is not None
        with self._lock:
            if found:
                self._known.add(device_id)
                self._unknown.pop(device_id, None)
            else:
                self._unknown[device_id] = now + DEVICE_TTL_S
        return found

    def trip_of(self, device_id: str) -> str | None:
        now = self._now()
        with self._lock:
            cached = self._trips.get(device_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        trip = current_trip(self.store.trips_for_device(device_id))
        with self._lock:
            self._trips[device_id] = (trip, now + self.ttl_s)
        return trip

    # -- one batch --------------------------------------------------------------------------
    def received_at(self, message: BusMessage) -> int:
        if self._server_time:
            return message.timestamp_ns // 1_000_000
        return self.clock.now_ms()

    def validate(self, batch: Sequence[BusMessage]) -> list[Rekeyed]:
        """Records to re-key; dead letters are stored before this returns."""
        out: list[Rekeyed] = []
        dead: list[DeadLetter] = []
        for m in batch:
            topic = m.topic
            received_at = self.received_at(m)
            parsed_topic = parse_topic(topic, PREFIX)
            if parsed_topic is not None and not self.known(parsed_topic[0]):
                dead.append(
                    DeadLetter(
                        topic,
                        m.data[:MAX_DEAD_PAYLOAD_BYTES],
                        received_at,
                        DeadLetterReason.UNKNOWN_DEVICE,
                        f"device {parsed_topic[0]!r} is not registered",
                        parsed_topic[0],
                    )
                )
                continue
            parsed = parse_message(topic, m.data, received_at, PREFIX)
            dead.extend(parsed.dead_letters)
            records: list[Fix | LockEvent] = [*parsed.fixes, *parsed.lock_events]
            if not records:
                continue
            assert parsed_topic is not None  # records only come from a well-formed topic
            trip = self.trip_of(parsed_topic[0])
            for r in records:
                out.append(Rekeyed(r.device_id, kind_of(r), r.ts, r.seq, trip, encode(r)))
        if dead:
            self.store.insert_dead_letters(dead)
            for d in dead:
                self.metrics.dead_letters.labels(str(d.reason)).inc()
        self.metrics.messages_in.inc(len(batch))
        return out


def current_trip(trips: Sequence[dict[str, Any]]) -> str | None:
    """The trip a device reports for: an active one (the newest), else the planned one that
    starts first (``trips`` newest ``planned_start`` first, as the store lists them)."""
    active = [t for t in trips if t.get("status") == "active"]
    if active:
        return str(active[0]["trip_id"])
    planned = [t for t in trips if t.get("status") == "planned"]
    if planned:
        return str(planned[-1]["trip_id"])
    return None
