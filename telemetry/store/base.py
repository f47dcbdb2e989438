"""The one store interface, implemented by SQLite (embedded) and TimescaleDB (production).

Both implementations pass ``tests/test_telemetry_store.py``; both are ``documents.SqlStore``
(every statement but the telemetry writes shared, ``sql.py``). The interface is synchronous:
the ingest loop calls it from one writer thread (``asyncio.to_thread``) and FastAPI runs
sync endpoints in its thread pool. Implementations must be thread-safe.

Conventions
- Times are integer epoch milliseconds (UTC) everywhere, including inside documents.
- Objects other than telemetry (devices, trips, geofences, shippers, alarms, webhooks,
  deliveries, keys) are JSON documents (``dict``) with a few indexed columns; the store
  never interprets fields it does not index, and returns documents as it was given them.
- Telemetry duplicates: a fix or lock event is identified by ``(device_id, ts, seq)``,
  with an absent ``seq`` being its own value (``None`` equals ``None`` for this purpose).
  Inserting a duplicate is not an error: it is skipped, and the returned mask says so.
- Nothing in alarm history, dead letters or telemetry is ever deleted by this interface,
  except ``drop_telemetry_before`` (retention).

Errors (``telemetry.errors``): ``StoreUnavailable`` when the database cannot be reached or
cannot serve now, ``Conflict`` for a key that exists, ``NotFound`` for a missing parent,
``StoreError`` for a document or value that cannot be stored; ``InvalidAddress`` from
``open_store`` for a URL of no usable form. Any other exception is a bug and is not wrapped.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from telemetry.models import DeadLetter, Fix, LockEvent
from telemetry.store.spans import Window, device_windows

Doc = dict[str, Any]


class Store(abc.ABC):
    """Persistent state of cargowatch."""

    # -- life cycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema (versioned migrations, idempotent)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    def ping(self) -> bool:
        """True when the store answers (health check)."""

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """The calls this thread makes inside the block share one transaction, committed
        when the block ends (rolled back if it raises). Many small writes then cost one
        commit: the alarm side of a batch. A nested block is a savepoint of the outer one:
        all of it or none, and the outer unit goes on if it fails. A call that fails with a
        database error may spoil its innermost unit, so guard such calls with a nested one
        (a ``Conflict`` from an insert is not such an error). This default groups nothing."""
        yield

    # -- engine state -----------------------------------------------------------------------
    @abc.abstractmethod
    def save_engine_states(
        self, states: Mapping[str, bytes], removed: Iterable[str] = (), *, at_ms: int = 0
    ) -> None:
        """Upsert the engine's per-trip checkpoints (covering every message received up to
        ``at_ms``) and delete those of ``removed`` trips."""

    @abc.abstractmethod
    def engine_states(self) -> dict[str, tuple[bytes, int]]:
        """Every stored per-trip engine checkpoint by trip id, with the ``at_ms`` it was
        saved with (the receive time up to which it covers the trip's messages)."""

    @abc.abstractmethod
    def engine_state(self, trip_id: str) -> tuple[bytes, int] | None:
        """One trip's checkpoint and its ``at_ms`` (None: none stored): a worker loading one
        trip must not read every trip's."""

    # -- devices ----------------------------------------------------------------------------
    @abc.abstractmethod
    def put_device(self, device: Doc) -> None:
        """Insert or replace a device; ``device["device_id"]`` is the key.

        Document fields: ``device_id``, ``kind`` (``gps`` | ``lock`` | ``combo``), ``shipper``
        (or None), ``name``, ``created_at``.
        """

    @abc.abstractmethod
    def get_device(self, device_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_devices(self, shipper: str | None = None) -> list[Doc]: ...

    @abc.abstractmethod
    def device_ids(self) -> set[str]:
        """All registered device ids (ingest's ``unknown_device`` check)."""

    # -- telemetry --------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_fixes(self, fixes: Sequence[Fix]) -> npt.NDArray[np.bool_]:
        """Store fixes in one transaction; return a mask, True where the row was new.

        Duplicates within ``fixes`` itself are also stored once (first wins).
        """

    @abc.abstractmethod
    def insert_lock_events(self, events: Sequence[LockEvent]) -> npt.NDArray[np.bool_]:
        """As ``insert_fixes``, for lock events."""

    @abc.abstractmethod
    def flag_fixes(self, keys: Sequence[tuple[str, int, int | None]], flag: str) -> None:
        """Mark stored fixes ``(device_id, ts, seq)`` as not valid for rules (``flag`` is the
        reason, e.g. ``gps_jump`` or ``null_island``). Flagged fixes are still returned by
        ``fixes()`` with ``extra["_flag"]`` set to the flag."""

    @abc.abstractmethod
    def fixes(
        self,
        device_ids: Sequence[str],
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        *,
        received_since: int | None = None,
    ) -> list[Fix]:
        """Stored fixes of these devices with ``since_ms <= ts <= until_ms`` (and, given
        ``received_since``, received at or after it), ordered by ``(ts, device_id)``."""

    @abc.abstractmethod
    def lock_events(
        self,
        device_ids: Sequence[str],
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        *,
        received_since: int | None = None,
    ) -> list[LockEvent]:
        """As ``fixes``, for lock events."""

    # Reads on behalf of a trip (track, replay): only the telemetry that is the trip's own.
    def trip_windows(
        self, trip: Doc, since_ms: int | None = None, until_ms: int | None = None
    ) -> dict[str, list[Window]]:
        """Per device of ``trip``, the time windows whose telemetry belongs to it: its own
        span minus later trips of the same device (``telemetry.store.spans``), narrowed by
        ``since_ms``/``until_ms``."""

        def others(device_id: str) -> list[tuple[Doc, list[Doc]]]:
            return [(t, self.trip_events(t["trip_id"])) for t in self.trips_for_device(device_id)]

        events = self.trip_events(trip["trip_id"]) if trip.get("trip_id") else []
        return device_windows(trip, events, others, since_ms, until_ms)

    def trip_fixes(
        self,
        trip: Doc,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
    ) -> list[Fix]:
        """``fixes`` of the trip's devices inside ``trip_windows``, ordered by
        ``(ts, device_id)``; never another trip's telemetry through a shared device."""
        out = [
            f
            for device, windows in self.trip_windows(trip, since_ms, until_ms).items()
            for since, until in windows
            for f in self.fixes([device], since, until, limit)
        ]
        out.sort(key=lambda f: (f.ts, f.device_id))
        return out if limit is None else out[:limit]

    def trip_lock_events(
        self,
        trip: Doc,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
    ) -> list[LockEvent]:
        """As ``trip_fixes``, for lock events."""
        out = [
            e
            for device, windows in self.trip_windows(trip, since_ms, until_ms).items()
            for since, until in windows
            for e in self.lock_events([device], since, until, limit)
        ]
        out.sort(key=lambda e: (e.ts, e.device_id))
        return out if limit is None else out[:limit]

    @abc.abstractmethod
    def last_fix(self, device_id: str) -> Fix | None:
        """The fix with the greatest ``ts`` of the device, if any."""

    @abc.abstractmethod
    def count_telemetry(self) -> dict[str, int]:
        """``{"fixes": n, "lock_events": m, "dead_letters": k}`` (tests, metrics)."""

    @abc.abstractmethod
    def drop_telemetry_before(self, ts_ms: int) -> None:
        """Retention: delete fixes and lock events older than ``ts_ms`` (drop_chunks on
        TimescaleDB)."""

    # -- dead letters -----------------------------------------------------------------------
    @abc.abstractmethod
    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...

    @abc.abstractmethod
    def dead_letters(
        self,
        reason: str | None = None,
        device_id: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        """Newest first. Each: ``id``, ``topic``, ``device_id``, ``received_at``, ``reason``,
        ``detail``, ``payload`` (bytes)."""

    # -- shippers ---------------------------------------------------------------------------
    @abc.abstractmethod
    def put_shipper(self, shipper: Doc) -> None:
        """Insert or replace; key ``shipper["shipper"]``; fields ``sla``, ``rules``."""

    @abc.abstractmethod
    def get_shipper(self, shipper_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_shippers(self) -> list[Doc]: ...

    # -- geofences --------------------------------------------------------------------------
    @abc.abstractmethod
    def put_geofence(self, fence: Doc) -> None:
        """Insert or replace; key ``fence["geofence_id"]``; indexed: ``kind``, ``shipper``."""

    @abc.abstractmethod
    def get_geofence(self, geofence_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_geofences(self, shipper: str | None = None, kind: str | None = None) -> list[Doc]:
        """With ``shipper`` given: that shipper's fences and the global ones (shipper None)."""

    # -- trips ------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_trip(self, trip: Doc) -> None:
        """Insert or replace; key ``trip["trip_id"]``; indexed: ``shipper``, ``status``,
        ``devices`` (for ``trips_for_device``)."""

    @abc.abstractmethod
    def get_trip(self, trip_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_trips(
        self, shipper: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Doc]:
        """Newest ``planned_start`` first."""

    @abc.abstractmethod
    def trips_for_device(self, device_id: str, status: str | None = None) -> list[Doc]:
        """Trips that list ``device_id`` among their ``devices`` (with ``status`` given: in
        that status), newest ``planned_start`` first."""

    @abc.abstractmethod
    def current_device_trips(self) -> dict[str, str]:
        """Every device of an active or planned trip → the trip it reports for: an active one
        (the newest, as ``trips_for_device`` lists them), else the planned one that starts
        first (the last of that list). The whole device → trip map in one read."""

    @abc.abstractmethod
    def add_trip_event(self, trip_id: str, event: Doc) -> None:
        """Append a milestone / status change (``kind``, ``ts``, ...). Never deleted."""

    @abc.abstractmethod
    def trip_events(self, trip_id: str) -> list[Doc]:
        """In insertion order."""

    # -- alarms -----------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_alarm(self, alarm: Doc) -> None:
        """Insert a new alarm (key ``alarm_id``; ``version`` starts at 1). Indexed: ``status``,
        ``type``, ``trip_id``, ``shipper``, ``ts``, ``raised_at``, ``ack_due``,
        ``resolve_due``. Raises ``Conflict`` if the id exists."""

    @abc.abstractmethod
    def update_alarm(self, alarm: Doc, expected_version: int) -> bool:
        """Replace the alarm if its stored ``version`` equals ``expected_version``; the new
        document must carry ``version = expected_version + 1``. False when it changed under
        us (the caller answers 409)."""

    @abc.abstractmethod
    def get_alarm(self, alarm_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_alarms(
        self,
        status: Sequence[str] | None = None,
        type: str | None = None,
        trip_id: str | None = None,
        shipper: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 1000,
        *,
        kind: str | None = None,
        assigned_to: str | None = None,
    ) -> list[Doc]:
        """Filter on ``raised_at >= since_ms`` / ``< until_ms``; newest first. ``kind`` is
        ``alarm`` (raised by the engine) or ``exception`` (reported by people); a document
        without one is an ``alarm``. None: both."""

    @abc.abstractmethod
    def alarms_due(self, now_ms: int) -> list[Doc]:
        """Open alarms whose ``ack_due <= now`` and not yet escalated for ack, and
        unresolved alarms whose ``resolve_due <= now`` not yet escalated for resolve: i.e.
        documents with ``status != "resolved"`` and (``ack_due <= now`` and ``status == "open"``
        and not ``ack_escalated``) or (``resolve_due <= now`` and not ``resolve_escalated``)."""

    @abc.abstractmethod
    def alarm_counts(self) -> dict[tuple[str, str], int]:
        """How many alarms are ``open`` and ``acknowledged``, by ``(type, status)``: one
        query whatever the number of alarms (metrics read it on every scrape). Pairs with
        no alarm are absent; resolved alarms are not counted."""

    @abc.abstractmethod
    def add_alarm_history(self, alarm_id: str, entry: Doc) -> None:
        """Append ``{"at", "by", "action", "from", "to", "note", ...}``. Never deleted."""

    @abc.abstractmethod
    def alarm_history(self, alarm_id: str) -> list[Doc]:
        """In insertion order."""

    # -- API keys ---------------------------------------------------------------------------
    @abc.abstractmethod
    def put_api_key(self, key: Doc) -> None:
        """Key ``key["key_hash"]`` (sha256 hex of the secret; never the secret itself);
        fields ``key_id`` (indexed, unique), ``role``, ``shipper``, ``created_at``, ``name``."""

    @abc.abstractmethod
    def get_api_key(self, key_hash: str) -> Doc | None:
        """The key's document with ``last_used_at`` and ``revoked_at`` (None if not)."""

    @abc.abstractmethod
    def list_api_keys(self) -> list[Doc]:
        """Every key (revoked ones too), as ``get_api_key``, oldest first."""

    @abc.abstractmethod
    def revoke_api_key(self, key_id: str, at_ms: int) -> bool:
        """Mark the key ``key_id`` revoked at ``at_ms`` (kept: history names it); a key
        revoked before keeps its time. False when there is no such key."""

    @abc.abstractmethod
    def touch_api_key(self, key_hash: str, at_ms: int) -> None:
        """Record a use of the key (``last_used_at`` only ever moves forward)."""

    # -- carriers ---------------------------------------------------------------------------
    @abc.abstractmethod
    def put_carrier(self, carrier: Doc) -> None:
        """Insert or replace; key ``carrier["carrier_id"]``; fields ``name``, ``contacts``."""

    @abc.abstractmethod
    def get_carrier(self, carrier_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_carriers(self) -> list[Doc]:
        """By ``carrier_id``."""

    @abc.abstractmethod
    def count_api_keys(self) -> int: ...

    # -- webhooks ---------------------------------------------------------------------------
    @abc.abstractmethod
    def put_webhook(self, hook: Doc) -> None:
        """Key ``hook["webhook_id"]``; fields ``shipper``, ``url``, ``secret``, ``events``."""

    @abc.abstractmethod
    def list_webhooks(self, shipper: str | None = None) -> list[Doc]: ...

    @abc.abstractmethod
    def delete_webhook(self, webhook_id: str) -> bool: ...

    @abc.abstractmethod
    def enqueue_deliveries(self, deliveries: Sequence[Doc]) -> None:
        """Outbox rows: ``delivery_id`` (key), ``webhook_id``, ``event_id``, ``shipper``,
        ``order_key`` (events of one alarm share it), ``body`` (str, the exact JSON sent),
        ``status`` (``pending`` | ``delivered`` | ``dead``), ``attempts``,
        ``next_attempt_at``, ``created_at``, ``last_error``. The store assigns a
        monotonically increasing ``seq`` that orders deliveries of one ``order_key``."""

    @abc.abstractmethod
    def due_deliveries(self, now_ms: int, limit: int = 100) -> list[Doc]:
        """Pending deliveries with ``next_attempt_at <= now``, not under a live lease, that
        are the oldest pending delivery (lowest ``seq``) of their (``webhook_id``,
        ``order_key``): in-order per alarm and receiver. A read: what a claim would take."""

    @abc.abstractmethod
    def claim_deliveries(
        self,
        now_ms: int,
        owner: str,
        lease_ms: int,
        limit: int = 100,
        *,
        skip_webhooks: Sequence[str] = (),
    ) -> list[Doc]:
        """Atomically lease up to ``limit`` of the ``due_deliveries`` (those of
        ``skip_webhooks`` left out) to ``owner`` until ``now_ms + lease_ms`` and return
        them, oldest first, each with ``seq``, ``lease_owner`` and ``lease_until``.

        A delivery is claimable when it is unclaimed or its lease has expired; two claims at
        once, in one process or several, never return the same delivery. A pending delivery
        under lease still holds back the later ones of its (webhook, order_key), so order
        per alarm and receiver is kept across senders."""

    @abc.abstractmethod
    def complete_delivery(self, delivery: Doc, owner: str) -> bool:
        """Record what a claimed delivery's attempt changed (as ``update_delivery``:
        status, attempts, next_attempt_at, last_error, ...) and clear its lease, only if
        ``owner`` still holds the lease (compare-and-set). False, and nothing written,
        when another owner has claimed it since (this owner's lease expired) or it was
        completed already. ``NotFound`` for a delivery that does not exist."""

    @abc.abstractmethod
    def release_deliveries(self, delivery_ids: Sequence[str], owner: str) -> int:
        """Give back, unchanged, the leases ``owner`` holds on these deliveries (claimed but
        not attempted); returns how many were released."""

    @abc.abstractmethod
    def update_delivery(self, delivery: Doc) -> None:
        """Replace status/attempts/next_attempt_at/last_error/delivered_at of a delivery,
        whoever holds its lease (which stays as it is). Senders use ``complete_delivery``."""

    @abc.abstractmethod
    def list_deliveries(
        self, shipper: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Doc]:
        """Newest first."""
