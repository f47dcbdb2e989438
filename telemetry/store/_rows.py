"""What both stores share: JSON encoding, telemetry rows, the indexed columns of documents.

Keeping these in one place is what makes the two stores behave identically: the same
document goes to the same columns, the same fix to the same row, the same bad value to the
same ``StoreError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from telemetry.errors import StoreError
from telemetry.models import DeadLetter, Fix, LockEvent, LockEventType, UnlockMethod

Doc = dict[str, Any]

# ``seq`` column value of a message without one. A NULL would not be equal to itself in a
# unique index, so "absent" is a value of its own, far outside any device counter.
NO_SEQ = -(2**63)

FLAG_KEY = "_flag"

FIX_COLUMNS = (
    "device_id",
    "ts",
    "seq",
    "lat",
    "lon",
    "speed_kmh",
    "heading_deg",
    "hdop",
    "sats",
    "battery_pct",
    "received_at",
    "extra",
)
LOCK_EVENT_COLUMNS = (
    "device_id",
    "ts",
    "seq",
    "event",
    "method",
    "lat",
    "lon",
    "battery_pct",
    "received_at",
    "extra",
)
# What reads select: the written columns plus the flag.
FIX_READ_COLUMNS = (*FIX_COLUMNS, "flag")

_SURROGATE = re.compile("[\ud800-\udfff]")
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


# -- JSON ------------------------------------------------------------------------------------
def dumps(obj: Any, **context: Any) -> str:
    """Compact JSON text of a document (numpy scalars allowed; NaN becomes null)."""
    try:
        return orjson.dumps(obj, option=_ORJSON_OPTS).decode()
    except TypeError:
        pass  # e.g. an int beyond 64 bits, which orjson refuses and json writes
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"document is not JSON-serialisable: {exc}", **context) from exc


def loads(text: str | bytes | memoryview) -> Any:
    """Parse JSON written by ``dumps`` (orjson, with the standard library as a fallback)."""
    if isinstance(text, memoryview):
        text = bytes(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StoreError(f"stored JSON is unreadable: {exc}") from exc


def clean_text(text: str | None) -> str | None:
    """Text that both databases accept: NUL and unpaired surrogates replaced by U+FFFD.

    Used for dead letters, whose text comes from a broken message and must still be stored.
    """
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
    return text


# -- telemetry -------------------------------------------------------------------------------
def seq_value(seq: int | None) -> int:
    return NO_SEQ if seq is None else int(seq)


def seq_of(value: int) -> int | None:
    return None if value == NO_SEQ else int(value)


def first_occurrences(keys: Iterable[tuple[str, int, int | None]], n: int) -> npt.NDArray[np.bool_]:
    """True at the first occurrence of each key (duplicates within one batch: first wins)."""
    first: dict[tuple[str, int, int | None], int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    mask = np.zeros(n, dtype=np.bool_)
    mask[np.fromiter(first.values(), dtype=np.intp, count=len(first))] = True
    return mask


def storage_keys(items: Sequence[Fix] | Sequence[LockEvent]) -> list[tuple[str, int, int]]:
    """Dedup keys as stored: an absent ``seq`` is ``NO_SEQ`` (so that keys sort)."""
    return [(x.device_id, x.ts, NO_SEQ if x.seq is None else x.seq) for x in items]


def key_order(keys: list[tuple[str, int, int]], first: npt.NDArray[np.bool_]) -> list[int]:
    """Indices of the first occurrences, in key order.

    Writers that insert new keys in one global order cannot deadlock on each other's
    uncommitted index entries: the later one waits for the earlier, then finds the keys.
    """
    return sorted(np.flatnonzero(first).tolist(), key=keys.__getitem__)


def item_keys(items: Sequence[Fix] | Sequence[LockEvent]) -> list[tuple[str, int, int | None]]:
    """Dedup keys as given: ``(device_id, ts, seq)`` with an absent ``seq`` as None."""
    return [(x.device_id, x.ts, x.seq) for x in items]


def extra_json(extra: dict[str, Any] | None, device_id: str) -> str | None:
    if extra is None:
        return None
    return dumps(extra, device_id=device_id)


def fix_row(f: Fix) -> tuple[Any, ...]:
    """The row of ``FIX_COLUMNS`` for a fix."""
    return (
        f.device_id,
        int(f.ts),
        seq_value(f.seq),
        f.lat,
        f.lon,
        f.speed_kmh,
        f.heading_deg,
        f.hdop,
        None if f.sats is None else int(f.sats),
        f.battery_pct,
        int(f.received_at),
        extra_json(f.extra, f.device_id),
    )


def lock_event_row(e: LockEvent) -> tuple[Any, ...]:
    """The row of ``LOCK_EVENT_COLUMNS`` for a lock event."""
    return (
        e.device_id,
        int(e.ts),
        seq_value(e.seq),
        enum_value(e.event),
        None if e.method is None else enum_value(e.method),
        e.lat,
        e.lon,
        e.battery_pct,
        int(e.received_at),
        extra_json(e.extra, e.device_id),
    )


def enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def _float(value: float | None) -> float | None:
    # NaN means unknown: both databases store it as NULL (SQLite does so by itself).
    if value is None or value != value:
        return None
    return float(value)


def fix_from_row(row: Sequence[Any]) -> Fix:
    """A ``Fix`` from a row of ``FIX_READ_COLUMNS``; a flag shows as ``extra["_flag"]``."""
    (device_id, ts, seq, lat, lon, speed, heading, hdop, sats, battery, received, extra, flag) = row
    extra_doc = None if extra is None else loads(extra)
    if flag is not None:
        extra_doc = {**(extra_doc or {}), FLAG_KEY: flag}
    return Fix(
        device_id=device_id,
        ts=int(ts),
        lat=float(lat),
        lon=float(lon),
        speed_kmh=_float(speed),
        heading_deg=_float(heading),
        hdop=_float(hdop),
        sats=None if sats is None else int(sats),
        battery_pct=_float(battery),
        seq=seq_of(seq),
        received_at=int(received),
        extra=extra_doc,
    )


def lock_event_from_row(row: Sequence[Any]) -> LockEvent:
    """A ``LockEvent`` from a row of ``LOCK_EVENT_COLUMNS``."""
    (device_id, ts, seq, event, method, lat, lon, battery, received, extra) = row
    try:
        kind = LockEventType(event)
        how = None if method is None else UnlockMethod(method)
    except ValueError as exc:
        raise StoreError(f"stored lock event is invalid: {exc}", device_id=device_id) from exc
    return LockEvent(
        device_id=device_id,
        ts=int(ts),
        event=kind,
        method=how,
        lat=_float(lat),
        lon=_float(lon),
        battery_pct=_float(battery),
        seq=seq_of(seq),
        received_at=int(received),
        extra=None if extra is None else loads(extra),
    )


def dead_letter_row(d: DeadLetter) -> tuple[Any, ...]:
    """(topic, device_id, received_at, reason, detail, payload): text made storable."""
    return (
        clean_text(d.topic) or "",
        clean_text(d.device_id),
        int(d.received_at),
        enum_value(d.reason),
        clean_text(d.detail),
        bytes(d.payload),
    )


def dead_letter_doc(row: Sequence[Any]) -> Doc:
    ident, topic, device_id, received_at, reason, detail, payload = row
    return {
        "id": int(ident),
        "topic": topic,
        "device_id": device_id,
        "received_at": int(received_at),
        "reason": reason,
        "detail": detail,
        "payload": bytes(payload),
    }


# -- documents -------------------------------------------------------------------------------
def key_of(doc: Any, field: str, kind: str) -> str:
    """The key of a document: a non-empty string, else a ``StoreError`` naming it."""
    if not isinstance(doc, dict):
        raise StoreError(f"a {kind} must be a JSON object", got=type(doc).__name__)
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise StoreError(f"a {kind} document needs a non-empty string {field!r}", value=value)
    return value


def opt_str(doc: Doc, field: str) -> str | None:
    value = doc.get(field)
    if value is None:
        return None
    return enum_value(value)


def opt_int(doc: Doc, field: str) -> int | None:
    """An indexed time or number; anything that is not a number (e.g. an ISO string) is NULL."""
    value = doc.get(field)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and np.isfinite(value):
        return int(value)
    return None


def trip_devices(doc: Doc) -> list[str]:
    devices = doc.get("devices") or []
    if not isinstance(devices, list | tuple):
        raise StoreError("a trip's 'devices' must be a list", trip_id=doc.get("trip_id"))
    return sorted({str(d) for d in devices})


def alarm_columns(doc: Doc) -> tuple[Any, ...]:
    """(status, type, trip_id, shipper, ts, raised_at, ack_due, resolve_due, ack_escalated,
    resolve_escalated, version, kind, assigned_to) of an alarm document (``kind`` is
    ``alarm`` unless the document says ``exception``)."""
    return (
        opt_str(doc, "status"),
        opt_str(doc, "type"),
        opt_str(doc, "trip_id"),
        opt_str(doc, "shipper"),
        opt_int(doc, "ts"),
        opt_int(doc, "raised_at"),
        opt_int(doc, "ack_due"),
        opt_int(doc, "resolve_due"),
        bool(doc.get("ack_escalated")),
        bool(doc.get("resolve_escalated")),
        alarm_version(doc),
        opt_str(doc, "kind") or "alarm",
        opt_str(doc, "assigned_to"),
    )


def api_key_doc(row: Sequence[Any]) -> Doc:
    """A stored key (``doc, last_used_at, revoked_at``) as one document."""
    doc = as_doc(row[0])
    doc["last_used_at"] = None if row[1] is None else int(row[1])
    doc["revoked_at"] = None if row[2] is None else int(row[2])
    return doc


def alarm_version(doc: Doc) -> int:
    version = doc.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int | np.integer):
        raise StoreError("an alarm's 'version' must be an integer", alarm_id=doc.get("alarm_id"))
    return int(version)


def statuses(status: Sequence[str] | str | None) -> list[str] | None:
    """A status filter as a list (a single string is one status, not its characters)."""
    if status is None:
        return None
    if isinstance(status, str):
        return [status]
    return [enum_value(s) for s in status]


# Fields of a delivery that ``update_delivery`` never changes: identity, order and content.
DELIVERY_FIXED_FIELDS = frozenset(
    {"delivery_id", "seq", "webhook_id", "event_id", "shipper", "order_key", "body", "created_at"}
)


def delivery_columns(doc: Doc) -> tuple[Any, ...]:
    """(delivery_id, webhook_id, order_key, shipper, status, next_attempt_at) of a delivery."""
    delivery_id = key_of(doc, "delivery_id", "delivery")
    webhook_id = key_of(doc, "webhook_id", "delivery")
    return (
        delivery_id,
        webhook_id,
        opt_str(doc, "order_key"),
        opt_str(doc, "shipper"),
        opt_str(doc, "status") or "pending",
        opt_int(doc, "next_attempt_at") or 0,
    )


def as_doc(value: str | bytes | memoryview | Doc) -> Doc:
    """A stored document: SQLite hands back its JSON text, PostgreSQL's driver parses
    ``json`` columns itself (with ``loads``, set up per connection)."""
    if isinstance(value, str | bytes | memoryview):
        doc: Doc = loads(value)
        return doc
    return value


def delivery_doc(seq: int, doc_text: str | bytes | Doc) -> Doc:
    doc = as_doc(doc_text)
    doc["seq"] = int(seq)
    return doc


def merged_delivery(stored: Doc, update: Doc) -> Doc:
    """The stored delivery with the changeable fields of ``update`` applied."""
    merged = dict(stored)
    for field, value in update.items():
        if field not in DELIVERY_FIXED_FIELDS:
            merged[field] = value
    merged.pop("seq", None)
    return merged


def fence_kind(fence: Doc) -> str | None:
    """A geofence's kind: top level, or in ``properties`` of a GeoJSON Feature."""
    kind = fence.get("kind")
    if kind is None and isinstance(fence.get("properties"), dict):
        kind = fence["properties"].get("kind")
    return None if kind is None else enum_value(kind)
