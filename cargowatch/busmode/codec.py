"""The payload of a re-keyed message: one validated record, exactly as stage 1 parsed it.

Stage 2 must not validate again (stage 1 did, and a second opinion could differ, e.g. on
``future_ts`` against a later clock), so the record travels as a compact JSON array of its
fields, ``received_at`` included, and is rebuilt field for field::

    ["p", ts, lat, lon, speed_kmh, heading_deg, hdop, sats, battery_pct, seq, received_at, extra]
    ["l", ts, event, method, lat, lon, battery_pct, seq, received_at, extra]

A **bundle** (kind ``bundle``: ``trip.{m}.{first device}.bundle``) carries many such records of
one trip partition, each with its device and trip: ``[[device_id, trip_id, record], …]``.
Stage 1 sends one bundle per trip partition per device batch instead of one message per
record: one publish, one acknowledgement, one delivered message and one JSON parse for a few
hundred records, in both stages. Stage 2 still reads single-record messages (written before
bundles; ``decode``), so a TRIPS stream need not be drained to upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from telemetry.models import Fix, LockEvent, LockEventType, UnlockMethod

POSITION = "position"
LOCK = "lock"
BUNDLE = "bundle"


def row_of(record: Fix | LockEvent) -> list[Any]:
    """The record as its JSON row (see the module's docstring)."""
    if type(record) is Fix:
        return [
            "p",
            record.ts,
            record.lat,
            record.lon,
            record.speed_kmh,
            record.heading_deg,
            record.hdop,
            record.sats,
            record.battery_pct,
            record.seq,
            record.received_at,
            record.extra,
        ]
    assert isinstance(record, LockEvent)
    return [
        "l",
        record.ts,
        record.event.value,
        None if record.method is None else record.method.value,
        record.lat,
        record.lon,
        record.battery_pct,
        record.seq,
        record.received_at,
        record.extra,
    ]


def encode(record: Fix | LockEvent) -> bytes:
    return orjson.dumps(row_of(record))


def decode(device_id: str, data: bytes) -> Fix | LockEvent:
    """The record back; ValueError (or KeyError/TypeError) for a payload not made by
    ``encode`` (the caller dead-letters it)."""
    return from_row(device_id, orjson.loads(data))


def from_row(device_id: str, row: Any) -> Fix | LockEvent:
    """One decoded record row (see ``decode``)."""
    if type(row) is not list or not row:
        raise ValueError("not a re-keyed record")
    if row[0] == "p":
        if len(row) != 12:
            raise ValueError(f"a position row has 12 fields, not {len(row)}")
        return Fix(device_id, *row[1:])  # per record: positional, no unpacking by name
    if row[0] == "l":
        _, ts, event, method, lat, lon, battery, seq, received, extra = row
        return LockEvent(
            device_id,
            ts,
            LockEventType(event),
            None if method is None else UnlockMethod(method),
            lat,
            lon,
            battery,
            seq,
            received,
            extra,
        )
    raise ValueError(f"unknown record kind {row[0]!r}")


def encode_bundle(entries: Sequence[tuple[str, str | None, bytes | list[Any]]]) -> bytes:
    """(device id, trip id, record) entries → one bundle payload; a record is its row
    (``row_of``) or already ``encode``d. One ``orjson.dumps`` for the whole bundle."""
    return orjson.dumps(
        [
            [device, trip, orjson.Fragment(record) if type(record) is bytes else record]
            for device, trip, record in entries
        ]
    )


def decode_bundle(data: bytes) -> list[tuple[Fix | LockEvent, str | None]]:
    """A bundle's records with their trip ids; ValueError (or KeyError/TypeError) for a
    payload not made by ``encode_bundle`` (the caller dead-letters it whole)."""
    entries = orjson.loads(data)
    if not isinstance(entries, list):
        raise ValueError("not a bundle of re-keyed records")
    out: list[tuple[Fix | LockEvent, str | None]] = []
    for device, trip, row in entries:
        if type(device) is not str or not (trip is None or type(trip) is str):
            raise ValueError("a bundle entry without its device or trip")
        out.append((from_row(device, row), trip))
    return out


def kind_of(record: Fix | LockEvent) -> str:
    return POSITION if isinstance(record, Fix) else LOCK
