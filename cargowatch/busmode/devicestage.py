"""Stage 1: a DEVICES partition → validated records re-keyed onto their trip's partition.

Per batch (in a thread: the store is synchronous): each message is validated
(``telemetry.parse``); unknown devices and bad input become dead letters, stored at once; each
record is keyed by the device's current trip — active first, else the next planned one — and
published on ``trip.{trip_partition(trip)}…`` (``telemetry.bus.rekey``). The consumer
acknowledges the batch only after every re-key publish is confirmed.

**A device changing trips.** The device → trip map is cached for ``ttl_s`` (5 s): read whole
(every active and planned trip) when it has expired, and per device for a device not in it;
a trip created, changed or ended through the API also drops its devices from the cache at
once (``forget``, on the control subject). So a device moved to another trip is re-keyed onto
the new trip's partition within ``ttl_s`` at the latest (only a lost control message leaves
it to the TTL); messages re-keyed before stay with the old trip. A device on no trip is keyed
by its own id, so its fixes are still stored (by the trip partition that owns that key), in
order.

**Dead letters once per message.** A batch is redelivered when its re-key failed or its worker
died between storing the dead letters and the acknowledgement. Each dead letter's ``detail``
ends with the message's place in the stream (``[DEVICES #seq]``, unique and the same on every
delivery, and it lets an operator find the message in the stream); for a redelivered message
the ones already stored under that mark are not stored again (``_new_only``). One worker owns
a device partition at a time, so nothing else stores that message's dead letters meanwhile.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from cargowatch.busmode.codec import kind_of, row_of
from cargowatch.busmode.lag import to_clock_ms
from cargowatch.metrics import Metrics
from core.clock import Clock, SystemClock
from telemetry.bus.consumer import BusMessage
from telemetry.bus.rekey import Rekeyed
from telemetry.bus.streams import DEVICE_STREAM
from telemetry.models import DeadLetter, DeadLetterReason, Fix, LockEvent
from telemetry.parse import MAX_DEAD_PAYLOAD_BYTES, parse_message, parse_topic
from telemetry.store import Store

PREFIX = "devices"  # the NATS server's mapping takes devices.*.* (telemetry.bus.config)
TRIP_TTL_S = 5.0
DEVICE_TTL_S = 5.0  # an unknown device is asked for again after this long
REDELIVERY_LOOKUP = 10_000  # stored dead letters read per device to recognise a redelivery


def stream_mark(seq: int) -> str:
    """The end of a dead letter's ``detail``: where its message sits in the device stream."""
    return f"[{DEVICE_STREAM} #{seq}]"


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
        self._map_until = 0.0  # when the whole device -> trip map is read again (``_reload``)
        self._reloading = threading.Lock()
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

    def trip_of(self, device_id: str, now: float | None = None) -> str | None:
        """The device's current trip (``now``: this monotonic time, read once per batch)."""
        if now is None:
            now = self._now()
        # read without the lock: a dict lookup is atomic, and an entry replaced meanwhile is
        # as good as the one before it (writes take the lock, to keep entry and TTL together)
        cached = self._trips.get(device_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        if self._map_until <= now:
            if not self._reload(now) and cached is not None:
                # Another partition's thread is reading the whole map: its entry, expired
                # by at most that read, rather than one query per message meanwhile.
                return cached[0]
            cached = self._trips.get(device_id)
            if cached is not None and cached[1] > now:
                return cached[0]
        # on no current trip, or forgotten since the last reload: ask for this device alone
        trip = current_trip(self.store.trips_for_device(device_id))
        with self._lock:
            self._trips[device_id] = (trip, now + self.ttl_s)
        return trip

    def _reload(self, now: float) -> bool:
        """Every device of every active or planned trip → its current trip, in one read
        (``Store.current_device_trips``, chosen as ``current_trip`` chooses) instead of one
        look-up per device: with ``ttl_s`` expiring on each of a fleet's devices in turn, the
        per-device look-up (each reading whole trip documents) cost stage 1 about a quarter
        of its CPU. A device on no current trip is not in the map and is looked up alone."""
        if not self._reloading.acquire(blocking=False):
            return False  # another partition's thread is reloading
        try:
            until = now + self.ttl_s
            fresh = {d: (t, until) for d, t in self.store.current_device_trips().items()}
            with self._lock:
                self._trips.update(fresh)
                self._map_until = until
        finally:
            self._reloading.release()
        return True

    # -- one batch --------------------------------------------------------------------------
    def received_at(self, message: BusMessage) -> int:
        if self._server_time:
            return message.timestamp_ns // 1_000_000
        return self.clock.now_ms()

    def validate(self, batch: Sequence[BusMessage]) -> list[Rekeyed]:
        """Records to re-key; dead letters are stored before this returns."""
        out: list[Rekeyed] = []
        dead: list[DeadLetter] = []
        again: list[tuple[BusMessage, DeadLetter]] = []  # of redelivered messages
        now = self._now()
        for m in batch:
            rejected = self._check(m, out, now)
            for d in rejected:
                mark = stream_mark(m.stream_seq)
                marked = dataclasses.replace(d, detail=f"{d.detail or ''} {mark}".lstrip())
                if m.delivered > 1:
                    again.append((m, marked))
                else:
                    dead.append(marked)
        if again:
            dead.extend(self._new_only(again))
        if dead:
            self.store.insert_dead_letters(dead)
            for d in dead:
                self.metrics.dead_letters.labels(str(d.reason)).inc()
        self.metrics.messages_in.inc(len(batch))
        return out

    def _check(self, m: BusMessage, out: list[Rekeyed], now: float) -> list[DeadLetter]:
        """Validate one message: its records appended to ``out``; returns its dead letters."""
        dead: list[DeadLetter] = []
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
            return dead
        parsed = parse_message(topic, m.data, received_at, PREFIX)
        dead.extend(parsed.dead_letters)
        records: list[Fix | LockEvent] = [*parsed.fixes, *parsed.lock_events]
        if not records:
            return dead
        assert parsed_topic is not None  # records only come from a well-formed topic
        trip = self.trip_of(parsed_topic[0], now)
        for r in records:
            out.append(Rekeyed(r.device_id, kind_of(r), r.ts, r.seq, trip, b"", row_of(r)))
        return dead

    def _new_only(self, again: Sequence[tuple[BusMessage, DeadLetter]]) -> list[DeadLetter]:
        """The dead letters of redelivered messages that an earlier delivery did not store. A
        batch's dead letters are stored in one transaction, so one stored row with a message's
        stream mark means all of them were. Looked up among the rows received no earlier than
        the message reached the stream (an accelerated clock: up to a second of rounding)."""
        since = min(to_clock_ms(m.timestamp_ns // 1_000_000, self.clock) for m, _ in again)
        stored: set[str] = set()
        for device_id, reason in {(d.device_id, str(d.reason)) for _, d in again}:
            rows = self.store.dead_letters(
                reason=reason, device_id=device_id, since_ms=since - 1000, limit=REDELIVERY_LOOKUP
            )
            stored |= {mark_of(r["detail"]) for r in rows if r["device_id"] == device_id}
        return [d for m, d in again if stream_mark(m.stream_seq) not in stored]


def mark_of(detail: str | None) -> str:
    """The stream mark a stored dead letter's ``detail`` ends with ("" if none)."""
    text = detail or ""
    at = text.rfind(f"[{DEVICE_STREAM} #")
    return text[at:] if at >= 0 else ""


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
