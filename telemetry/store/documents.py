"""The store methods both databases share, each written once over a ``Session``.

Just over 500 lines on purpose: every document method of the ``Store`` interface in one place,
so that no method is written twice for the two databases.

A store subclass supplies ``dialect`` (``sql.Dialect``), ``_session`` (a connection in one
of three modes) and the telemetry writes; everything here is the same SQL on both, so the
two stores cannot drift apart. Modes of ``_session``:

- ``read``: one or more reads (PostgreSQL: a pooled connection in autocommit);
- ``write``: one write statement (PostgreSQL: autocommit, one round trip; SQLite: its own
  IMMEDIATE transaction, or a savepoint inside a unit of work);
- ``atomic``: several statements that stand or fall together (a transaction, or inside a
  unit of work part of the unit's).

Database errors leave ``_session`` as the kinds of ``telemetry.errors`` (``Conflict``,
``NotFound``, ``StoreUnavailable``, ``StoreError``); a programming error (bad SQL, a value
the driver cannot adapt) leaves it as it is.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

import orjson

from telemetry.errors import Conflict, NotFound, StoreError
from telemetry.models import DeadLetter, Fix, LockEvent
from telemetry.store import _rows as R
from telemetry.store import sql as Q
from telemetry.store.base import Doc, Store

log = logging.getLogger(__name__)

Mode = Literal["read", "write", "atomic"]

# Columns of a delivery that ``claim_deliveries`` adds to the documents it returns; they are
# the lease's, never part of the stored document.
_LEASE_FIELDS = frozenset({"lease_owner", "lease_until"})


class Result(Protocol):
    """What a statement returns (a DB-API cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Session(Protocol):
    """A connection that runs statements with named parameters (``:name``), translated to
    its driver's style."""

    def execute(self, sql: str, params: Mapping[str, Any], /) -> Result: ...

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]], /) -> object: ...


class SqlStore(Store):
    """``Store`` on a SQL database, but for connections and telemetry writes."""

    dialect: Q.Dialect

    @abc.abstractmethod
    def _session(self, mode: Mode, what: str, **context: Any) -> AbstractContextManager[Session]:
        """A connection for ``what`` (named in errors, with ``context``)."""

    def _fetch(self, sql: str, params: Q.Params, what: str, **context: Any) -> list[Any]:
        with self._session("read", what, **context) as s:
            return s.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Q.Params, what: str, **context: Any) -> Any:
        with self._session("read", what, **context) as s:
            return s.execute(sql, params).fetchone()

    def _docs(self, sql: str, params: Q.Params, what: str = "query") -> list[Doc]:
        return [R.as_doc(row[0]) for row in self._fetch(sql, params, what)]

    def _get_doc(self, table: str, key_column: str, key: str) -> Doc | None:
        row = self._one(
            Q.get_doc(table, key_column), {"key": key}, f"get from {table}", **{key_column: key}
        )
        return None if row is None else R.as_doc(row[0])

    def _put(self, sql: str, what: str, params: Q.Params, **context: Any) -> None:
        with self._session("write", what, **context) as s:
            s.execute(sql, params)

    # -- engine state -----------------------------------------------------------------------
    def save_engine_states(
        self, states: Mapping[str, bytes], removed: Iterable[str] = (), *, at_ms: int = 0
    ) -> None:
        gone = [{"trip_id": t} for t in removed if t not in states]
        rows = [{"trip_id": t, "state": bytes(b), "at": int(at_ms)} for t, b in states.items()]
        if not rows and not gone:
            return
        with self._session("atomic", "save_engine_states") as s:
            if rows:
                s.executemany(Q.PUT_ENGINE_STATE, rows)
            if gone:
                s.executemany(Q.DELETE_ENGINE_STATE, gone)

    def engine_states(self) -> dict[str, tuple[bytes, int]]:
        rows = self._fetch(Q.ENGINE_STATES, {}, "engine_states")
        return {str(trip_id): (bytes(state), int(at)) for trip_id, state, at in rows}

    def engine_state(self, trip_id: str) -> tuple[bytes, int] | None:
        rows = self._fetch(Q.ENGINE_STATE, {"trip_id": trip_id}, "engine_state")
        return (bytes(rows[0][1]), int(rows[0][2])) if rows else None

    # -- devices ----------------------------------------------------------------------------
    def put_device(self, device: Doc) -> None:
        device_id = R.key_of(device, "device_id", "device")
        text = R.dumps(device, device_id=device_id)
        params = {"device_id": device_id, "shipper": R.opt_str(device, "shipper"), "doc": text}
        self._put(Q.PUT_DEVICE, "put_device", params, device_id=device_id)

    def get_device(self, device_id: str) -> Doc | None:
        return self._get_doc("devices", "device_id", device_id)

    def list_devices(self, shipper: str | None = None) -> list[Doc]:
        return self._docs(*Q.select_docs("devices", "device_id", shipper=shipper))

    def device_ids(self) -> set[str]:
        return {row[0] for row in self._fetch(Q.DEVICE_IDS, {}, "device_ids")}

    # -- telemetry reads --------------------------------------------------------------------
    def fixes(
        self,
        device_ids: Sequence[str],
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        *,
        received_since: int | None = None,
    ) -> list[Fix]:
        if not device_ids:
            return []
        sql, params = Q.telemetry_query(
            self.dialect, Q.FIX_SELECT, device_ids, since_ms, until_ms, limit, received_since
        )
        rows = self._fetch(sql, params, "fixes", devices=len(device_ids))
        return [R.fix_from_row(row) for row in rows]

    def lock_events(
        self,
        device_ids: Sequence[str],
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        *,
        received_since: int | None = None,
    ) -> list[LockEvent]:
        if not device_ids:
            return []
        sql, params = Q.telemetry_query(
            self.dialect, Q.LOCK_EVENT_SELECT, device_ids, since_ms, until_ms, limit, received_since
        )
        rows = self._fetch(sql, params, "lock_events", devices=len(device_ids))
        return [R.lock_event_from_row(row) for row in rows]

    def last_fix(self, device_id: str) -> Fix | None:
        row = self._one(Q.LAST_FIX, {"device_id": device_id}, "last_fix", device_id=device_id)
        return None if row is None else R.fix_from_row(row)

    def count_telemetry(self) -> dict[str, int]:
        fixes, events, letters = self._one(Q.COUNT_TELEMETRY, {}, "count_telemetry")
        return {"fixes": int(fixes), "lock_events": int(events), "dead_letters": int(letters)}

    def flag_fixes(self, keys: Sequence[tuple[str, int, int | None]], flag: str) -> None:
        if not keys:
            return
        rows = [
            {"flag": flag, "device_id": device_id, "ts": int(ts), "seq": R.seq_value(seq)}
            for device_id, ts, seq in keys
        ]
        with self._session("atomic", "flag_fixes", flag=flag, rows=len(rows)) as s:
            s.executemany(Q.FLAG_FIX, rows)

    def drop_telemetry_before(self, ts_ms: int) -> None:
        cutoff = int(ts_ms)
        chunks = deleted = 0
        with self._session("atomic", "drop_telemetry_before", ts_ms=cutoff) as s:
            for table in Q.TELEMETRY_TABLES:
                chunks += self._drop_chunks(s, table, cutoff)
                deleted += s.execute(Q.delete_telemetry(table), {"cutoff": cutoff}).rowcount
        log.info(
            "retention: dropped %d chunks and deleted %d rows of telemetry before %d",
            chunks,
            deleted,
            cutoff,
        )

    def _drop_chunks(self, session: Session, table: str, cutoff: int) -> int:
        """Drop whole partitions of ``table`` older than ``cutoff``; how many (none here)."""
        return 0

    # -- dead letters -----------------------------------------------------------------------
    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [
            dict(zip(Q.DEAD_LETTER_COLUMNS, R.dead_letter_row(d), strict=True)) for d in letters
        ]
        with self._session("atomic", "insert_dead_letters", rows=len(rows)) as s:
            s.executemany(Q.INSERT_DEAD_LETTER, rows)

    def dead_letters(
        self,
        reason: str | None = None,
        device_id: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        clauses, params = Q.equal(reason=reason, device_id=device_id)
        if since_ms is not None:
            clauses.append("received_at >= :since")
            params["since"] = int(since_ms)
        params["limit"] = int(limit)
        sql = f"{Q.DEAD_LETTER_SELECT}{Q.where(clauses)}{Q.DEAD_LETTER_ORDER}"
        return [R.dead_letter_doc(row) for row in self._fetch(sql, params, "dead_letters")]

    # -- shippers ---------------------------------------------------------------------------
    def put_shipper(self, shipper: Doc) -> None:
        key = R.key_of(shipper, "shipper", "shipper")
        params = {"shipper": key, "doc": R.dumps(shipper, shipper=key)}
        self._put(Q.PUT_SHIPPER, "put_shipper", params, shipper=key)

    def get_shipper(self, shipper_id: str) -> Doc | None:
        return self._get_doc("shippers", "shipper", shipper_id)

    def list_shippers(self) -> list[Doc]:
        return self._docs(*Q.select_docs("shippers", "shipper"))

    # -- geofences --------------------------------------------------------------------------
    def put_geofence(self, fence: Doc) -> None:
        key = R.key_of(fence, "geofence_id", "geofence")
        params = {
            "geofence_id": key,
            "kind": R.fence_kind(fence),
            "shipper": R.opt_str(fence, "shipper"),
            "doc": R.dumps(fence, geofence_id=key),
        }
        self._put(Q.PUT_GEOFENCE, "put_geofence", params, geofence_id=key)

    def get_geofence(self, geofence_id: str) -> Doc | None:
        return self._get_doc("geofences", "geofence_id", geofence_id)

    def list_geofences(self, shipper: str | None = None, kind: str | None = None) -> list[Doc]:
        clauses, params = Q.equal(kind=kind)
        if shipper is not None:
            clauses.insert(0, "(shipper = :shipper OR shipper IS NULL)")
            params["shipper"] = shipper
        return self._docs(
            f"SELECT doc FROM geofences{Q.where(clauses)} ORDER BY geofence_id", params
        )

    # -- trips ------------------------------------------------------------------------------
    def put_trip(self, trip: Doc) -> None:
        trip_id = R.key_of(trip, "trip_id", "trip")
        params = {
            "trip_id": trip_id,
            "shipper": R.opt_str(trip, "shipper"),
            "status": R.opt_str(trip, "status"),
            "planned_start": R.opt_int(trip, "planned_start"),
            "doc": R.dumps(trip, trip_id=trip_id),
        }
        devices = self.dialect.list_value(R.trip_devices(trip))
        with self._session("atomic", "put_trip", trip_id=trip_id) as s:
            s.execute(Q.PUT_TRIP, params)
            s.execute(Q.DELETE_TRIP_DEVICES, {"trip_id": trip_id})
            s.execute(
                Q.insert_trip_devices(self.dialect),
                {"trip_id": trip_id, "devices": devices},
            )

    def get_trip(self, trip_id: str) -> Doc | None:
        return self._get_doc("trips", "trip_id", trip_id)

    def list_trips(
        self, shipper: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Doc]:
        sql, params = Q.select_docs("trips", Q.TRIP_ORDER, shipper=shipper, status=status)
        return self._docs(f"{sql} LIMIT :limit", {**params, "limit": int(limit)})

    def trips_for_device(self, device_id: str, status: str | None = None) -> list[Doc]:
        extra = "" if status is None else " AND t.status = :status"
        params = {"device_id": device_id, "status": status}
        return self._docs(Q.TRIPS_FOR_DEVICE.format(status=extra), params, "trips_for_device")

    def current_device_trips(self) -> dict[str, str]:
        aggregate = self.dialect.json_object_sql.format(key="device_id", value="trip_id")
        row = self._one(Q.CURRENT_DEVICE_TRIPS.format(aggregate=aggregate), {}, "device trips")
        found = orjson.loads(row[0]) if row is not None and row[0] is not None else {}
        if not isinstance(found, dict):
            raise StoreError("the device -> trip map is not an object")
        return {str(d): str(t) for d, t in found.items()}

    def add_trip_event(self, trip_id: str, event: Doc) -> None:
        if not isinstance(event, dict):
            raise StoreError("a trip event must be a JSON object", trip_id=trip_id)
        params = {
            "trip_id": trip_id,
            "kind": R.opt_str(event, "kind"),
            "ts": R.opt_int(event, "ts"),
            "event": R.dumps(event, trip_id=trip_id),
        }
        with self._session("write", "add_trip_event", trip_id=trip_id) as s:
            if s.execute(Q.ADD_TRIP_EVENT, params).rowcount != 1:
                raise NotFound("no such trip", trip_id=trip_id)

    def trip_events(self, trip_id: str) -> list[Doc]:
        return self._docs(Q.TRIP_EVENTS, {"trip_id": trip_id}, "trip_events")

    # -- alarms -----------------------------------------------------------------------------
    def insert_alarm(self, alarm: Doc) -> None:
        alarm_id = R.key_of(alarm, "alarm_id", "alarm")
        doc = alarm if "version" in alarm else {**alarm, "version": 1}
        params = Q.alarm_params(alarm_id, doc, R.dumps(doc, alarm_id=alarm_id))
        with self._session("write", "insert_alarm", alarm_id=alarm_id) as s:
            # ON CONFLICT DO NOTHING rather than an error: inside a unit of work an expected
            # conflict must not spoil the transaction.
            if s.execute(Q.INSERT_ALARM, params).rowcount != 1:
                raise Conflict("an alarm with this id exists", alarm_id=alarm_id)

    def update_alarm(self, alarm: Doc, expected_version: int) -> bool:
        alarm_id = R.key_of(alarm, "alarm_id", "alarm")
        params = Q.alarm_params(alarm_id, alarm, R.dumps(alarm, alarm_id=alarm_id))
        if params["version"] != int(expected_version) + 1:
            raise StoreError(
                "the new alarm document must carry version = expected_version + 1",
                alarm_id=alarm_id,
                version=params["version"],
                expected_version=expected_version,
            )
        params["expected_version"] = int(expected_version)
        with self._session("write", "update_alarm", alarm_id=alarm_id) as s:
            if s.execute(Q.UPDATE_ALARM, params).rowcount == 1:
                return True
            exists = s.execute(Q.ALARM_EXISTS, {"alarm_id": alarm_id})
            if exists.fetchone() is not None:
                return False
        raise NotFound("no such alarm", alarm_id=alarm_id)

    def get_alarm(self, alarm_id: str) -> Doc | None:
        return self._get_doc("alarms", "alarm_id", alarm_id)

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
        clauses, params = Q.equal(
            type=type, trip_id=trip_id, shipper=shipper, kind=kind, assigned_to=assigned_to
        )
        wanted = R.statuses(status)
        if wanted is not None:
            clauses.append(self.dialect.in_list("status", "statuses"))
            params["statuses"] = self.dialect.list_value(wanted)
        if since_ms is not None:
            clauses.append("raised_at >= :since")
            params["since"] = int(since_ms)
        if until_ms is not None:
            clauses.append("raised_at < :until")
            params["until"] = int(until_ms)
        params["limit"] = int(limit)
        sql = f"SELECT doc FROM alarms{Q.where(clauses)} ORDER BY {Q.ALARM_ORDER} LIMIT :limit"
        return self._docs(sql, params, "list_alarms")

    def alarms_due(self, now_ms: int) -> list[Doc]:
        return self._docs(self.dialect.alarms_due_sql, {"now": int(now_ms)}, "alarms_due")

    def alarm_counts(self) -> dict[tuple[str, str], int]:
        rows = self._fetch(Q.ALARM_COUNTS, {}, "alarm_counts")
        return {(str(kind), str(status)): int(n) for kind, status, n in rows}

    def add_alarm_history(self, alarm_id: str, entry: Doc) -> None:
        if not isinstance(entry, dict):
            raise StoreError("an alarm history entry must be a JSON object", alarm_id=alarm_id)
        params = {"alarm_id": alarm_id, "entry": R.dumps(entry, alarm_id=alarm_id)}
        with self._session("write", "add_alarm_history", alarm_id=alarm_id) as s:
            if s.execute(Q.ADD_ALARM_HISTORY, params).rowcount != 1:
                raise NotFound("no such alarm", alarm_id=alarm_id)

    def alarm_history(self, alarm_id: str) -> list[Doc]:
        return self._docs(Q.ALARM_HISTORY, {"alarm_id": alarm_id}, "alarm_history")

    # -- API keys ---------------------------------------------------------------------------
    def put_api_key(self, key: Doc) -> None:
        key_hash = R.key_of(key, "key_hash", "API key")
        params = {
            "key_hash": key_hash,
            "role": R.opt_str(key, "role"),
            "shipper": R.opt_str(key, "shipper"),
            "key_id": R.opt_str(key, "key_id"),
            "doc": R.dumps(key, key_id=key.get("key_id")),
        }
        self._put(Q.PUT_API_KEY, "put_api_key", params, key_id=key.get("key_id"))

    def get_api_key(self, key_hash: str) -> Doc | None:
        row = self._one(Q.GET_API_KEY, {"key_hash": key_hash}, "get_api_key")
        return None if row is None else R.api_key_doc(row)

    def list_api_keys(self) -> list[Doc]:
        rows = self._fetch(Q.API_KEY_SELECT, {}, "list_api_keys")
        docs = [R.api_key_doc(row) for row in rows]
        docs.sort(key=lambda d: (R.opt_int(d, "created_at") or 0, str(d.get("key_id"))))
        return docs

    def revoke_api_key(self, key_id: str, at_ms: int) -> bool:
        params = {"key_id": key_id, "at": int(at_ms)}
        with self._session("write", "revoke_api_key", key_id=key_id) as s:
            if s.execute(Q.REVOKE_API_KEY, params).rowcount == 1:
                return True
            return s.execute(Q.API_KEY_EXISTS, {"key_id": key_id}).fetchone() is not None

    def touch_api_key(self, key_hash: str, at_ms: int) -> None:
        params = {"key_hash": key_hash, "at": int(at_ms)}
        self._put(Q.TOUCH_API_KEY, "touch_api_key", params)

    def count_api_keys(self) -> int:
        row = self._one(Q.COUNT_API_KEYS, {}, "count_api_keys")
        return 0 if row is None else int(row[0])

    # -- carriers ---------------------------------------------------------------------------
    def put_carrier(self, carrier: Doc) -> None:
        key = R.key_of(carrier, "carrier_id", "carrier")
        params = {"carrier_id": key, "doc": R.dumps(carrier, carrier_id=key)}
        self._put(Q.PUT_CARRIER, "put_carrier", params, carrier_id=key)

    def get_carrier(self, carrier_id: str) -> Doc | None:
        return self._get_doc("carriers", "carrier_id", carrier_id)

    def list_carriers(self) -> list[Doc]:
        return self._docs(*Q.select_docs("carriers", "carrier_id"))

    # -- webhooks ---------------------------------------------------------------------------
    def put_webhook(self, hook: Doc) -> None:
        webhook_id = R.key_of(hook, "webhook_id", "webhook")
        params = {
            "webhook_id": webhook_id,
            "shipper": R.opt_str(hook, "shipper"),
            "doc": R.dumps(hook, webhook_id=webhook_id),
        }
        self._put(Q.PUT_WEBHOOK, "put_webhook", params, webhook_id=webhook_id)

    def list_webhooks(self, shipper: str | None = None) -> list[Doc]:
        return self._docs(*Q.select_docs("webhooks", "webhook_id", shipper=shipper))

    def delete_webhook(self, webhook_id: str) -> bool:
        with self._session("write", "delete_webhook", webhook_id=webhook_id) as s:
            cur = s.execute(Q.DELETE_WEBHOOK, {"webhook_id": webhook_id})
            return cur.rowcount == 1

    def enqueue_deliveries(self, deliveries: Sequence[Doc]) -> None:
        """Outbox rows in the given order; a ``delivery_id`` already queued is skipped, so
        enqueueing the same event again is harmless (at-least-once callers)."""
        if not deliveries:
            return
        rows = [
            {
                **dict(zip(Q.DELIVERY_COLUMNS, R.delivery_columns(d), strict=True)),
                "doc": R.dumps(d, delivery_id=d.get("delivery_id")),
            }
            for d in deliveries
        ]
        with self._session("atomic", "enqueue_deliveries", rows=len(rows)) as s:
            s.executemany(Q.ENQUEUE_DELIVERY, rows)

    def due_deliveries(self, now_ms: int, limit: int = 100) -> list[Doc]:
        params = {"now": int(now_ms), "limit": int(limit)}
        rows = self._fetch(Q.DUE_DELIVERIES, params, "due_deliveries")
        return [R.delivery_doc(seq, doc) for seq, doc in rows]

    def claim_deliveries(
        self,
        now_ms: int,
        owner: str,
        lease_ms: int,
        limit: int = 100,
        *,
        skip_webhooks: Sequence[str] = (),
    ) -> list[Doc]:
        if not owner:
            raise StoreError("a lease needs an owner")
        if lease_ms <= 0 or limit <= 0:
            return []
        until = int(now_ms) + int(lease_ms)
        params: Q.Params = {"now": int(now_ms), "owner": owner, "until": until, "limit": limit}
        if skip_webhooks:
            params["skip"] = self.dialect.list_value(list(skip_webhooks))
        sql = Q.claim_deliveries(self.dialect, bool(skip_webhooks))
        with self._session("atomic", "claim_deliveries", owner=owner) as s:
            rows = s.execute(sql, params).fetchall()
        # RETURNING gives no order: the caller gets the claim oldest first.
        claimed = sorted((int(seq), doc) for seq, doc in rows)
        return [
            {**R.delivery_doc(seq, doc), "lease_owner": owner, "lease_until": until}
            for seq, doc in claimed
        ]

    def update_delivery(self, delivery: Doc) -> None:
        self._write_delivery(delivery, None)

    def complete_delivery(self, delivery: Doc, owner: str) -> bool:
        return self._write_delivery(delivery, owner)

    def release_deliveries(self, delivery_ids: Sequence[str], owner: str) -> int:
        if not delivery_ids:
            return 0
        params = {"ids": self.dialect.list_value(list(delivery_ids)), "owner": owner}
        with self._session("write", "release_deliveries", owner=owner) as s:
            return int(s.execute(Q.release_deliveries(self.dialect), params).rowcount)

    def _write_delivery(self, delivery: Doc, owner: str | None) -> bool:
        """Merge the changeable fields into the stored delivery; with ``owner``, only while
        that owner holds its lease, which the write then clears."""
        delivery_id = R.key_of(delivery, "delivery_id", "delivery")
        key = {"delivery_id": delivery_id}
        what = "update_delivery" if owner is None else "complete_delivery"
        with self._session("atomic", what, delivery_id=delivery_id) as s:
            row = s.execute(Q.DELIVERY_LEASED_DOC + self.dialect.for_update, key)
            stored = row.fetchone()
            if stored is None:
                raise NotFound("no such delivery", delivery_id=delivery_id)
            if owner is not None and stored[1] != owner:
                log.info("lease of delivery %s lost by %s (now %s)", delivery_id, owner, stored[1])
                return False
            change = {k: v for k, v in delivery.items() if k not in _LEASE_FIELDS}
            merged = R.merged_delivery(R.as_doc(stored[0]), change)
            params = {
                **key,
                "status": R.opt_str(merged, "status") or "pending",
                "next_attempt_at": R.opt_int(merged, "next_attempt_at") or 0,
                "doc": R.dumps(merged, delivery_id=delivery_id),
            }
            if owner is None:
                s.execute(Q.UPDATE_DELIVERY, params)
            else:
                s.execute(Q.COMPLETE_DELIVERY, {**params, "owner": owner})
            return True

    def list_deliveries(
        self, shipper: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Doc]:
        clauses, params = Q.equal(shipper=shipper, status=status)
        sql = f"SELECT seq, doc FROM deliveries{Q.where(clauses)} ORDER BY seq DESC LIMIT :limit"
        rows = self._fetch(sql, {**params, "limit": int(limit)}, "list_deliveries")
        return [R.delivery_doc(seq, doc) for seq, doc in rows]
