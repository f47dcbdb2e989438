"""Validation of device messages (docs/devices.md): MQTT topic + payload bytes -> fixes, lock
events and dead letters.

One module of ~600 lines on purpose: it is the whole wire format, and the hot loop and the
checks it inlines are read (and measured) together.

The parser is on the ingest hot path and must never raise: every message ends up as records,
dead letters. Each element of a backlog array is validated on its own, so one bad fix does
not cost its neighbours; an empty array is one ``schema`` dead letter (a device that sends
``[]`` is misbehaving, and dropping it silently would hide that).

Check order for one element (the first failure decides the reason): payload ``device_id``
(``topic_mismatch``), ``ts`` (``schema`` / ``out_of_range`` / ``future_ts``), then the fields in
contract order (``schema`` for a missing or mistyped field, ``out_of_range`` for a value past
its limits), then the unknown extras (kept, unless they cannot be stored again).

``unknown_device`` and duplicates are decided by ingest and the store, not here.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import orjson

from telemetry.errors import TelemetryError
from telemetry.models import (
    DeadLetter,
    DeadLetterReason,
    Fix,
    LockEvent,
    LockEventType,
    MessageKind,
    ParsedMessage,
    UnlockMethod,
)

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""A payload longer than this is dead-lettered whole as ``too_large``."""
MAX_DEAD_PAYLOAD_BYTES: Final = 64 * 1024
"""Dead letters keep at most this much of the raw payload."""
MIN_TS_MS: Final = 946_684_800_000
"""2000-01-01T00:00:00Z: anything earlier is a device clock that was never set."""
MAX_TS_MS: Final = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last instant an RFC 3339 time can spell."""
MAX_SEQ: Final = 2**63
"""``seq`` must fit a signed 64-bit column."""

_REASON = DeadLetterReason
_DEVICE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
# RFC 3339 date-time (section 5.6); lower-case t/z and a space separator are allowed by its
# notes. [0-9] rather than \d: \d would accept non-ASCII digits that int() happily converts.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_UNIX_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_KINDS: Final = {"position": MessageKind.POSITION, "lock": MessageKind.LOCK}
_EVENTS: Final = {e.value: e for e in LockEventType}
_METHODS: Final = {m.value: m for m in UnlockMethod}
_EVENT_NAMES: Final = ", ".join(_EVENTS)
_METHOD_NAMES: Final = ", ".join(_METHODS)

# Known payload fields per kind; everything else goes to ``extra``. ``device_id`` is checked
# against the topic and is never an extra.
_FIX_FIELDS: Final = frozenset(
    {"device_id", "ts", "lat", "lon", "speed_kmh", "heading_deg", "hdop", "sats"}
    | {"battery_pct", "seq"}
)
_LOCK_FIELDS: Final = frozenset(
    {"device_id", "ts", "event", "method", "lat", "lon", "battery_pct", "seq"}
)
_MISSING: Final = object()


class _Rejected(TelemetryError):
    """One element failed validation (private: it never leaves this module)."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# -- topics ----------------------------------------------------------------------------------


def parse_topic(topic: str, prefix: str = "devices") -> tuple[str, MessageKind] | None:
    """Split ``{prefix}/{device_id}/{position|lock}`` into the device id and the message kind.

    Returns ``None`` for a topic that is not ours or is malformed (wrong prefix, a device id
    that is not 1-64 chars of ``[A-Za-z0-9_.:-]``, an unknown kind, extra levels). Never raises.
    """
    if type(topic) is not str or type(prefix) is not str:
        return None
    return _split_topic(topic, prefix)


@functools.lru_cache(maxsize=1 << 16)  # twice per message; a fleet's topics repeat
def _split_topic(topic: str, prefix: str) -> tuple[str, MessageKind] | None:
    if prefix:
        n = len(prefix)
        if not topic.startswith(prefix) or topic[n : n + 1] != "/":
            return None
        rest = topic[n + 1 :]
    else:
        rest = topic
    device_id, sep, kind_name = rest.partition("/")
    kind = _KINDS.get(kind_name) if sep else None
    if kind is None or _DEVICE_ID.fullmatch(device_id) is None:
        return None
    return device_id, kind


def _topic_problem(topic: object, prefix: str) -> str:
    """Say why ``parse_topic`` refused a topic (slow path, for the dead letter's detail)."""
    if type(topic) is not str:
        return f"topic {_show(topic)} is not a string"
    shape = f"expected {prefix + '/' if prefix else ''}{{device_id}}/position or .../lock"
    if prefix and not topic.startswith(prefix + "/"):
        return f"topic {_show(topic)} does not start with {prefix + '/'!r}; {shape}"
    rest = topic[len(prefix) + 1 :] if prefix else topic
    parts = rest.split("/")
    if len(parts) != 2:
        return f"topic {_show(topic)} has {len(parts)} levels after the prefix; {shape}"
    device_id, kind = parts
    if _DEVICE_ID.fullmatch(device_id) is None:
        return f"device id {_show(device_id)} in the topic is not 1-64 chars of [A-Za-z0-9_.:-]"
    return f"unknown message kind {_show(kind)} in the topic; {shape}"


# -- messages --------------------------------------------------------------------------------


def parse_message(
    topic: str,
    payload: bytes,
    received_at: int,
    prefix: str = "devices",
    max_future_ms: int = 300_000,
) -> ParsedMessage:
    """Validate one MQTT message into fixes, lock events and dead letters.

    ``payload`` is one JSON object or a backlog array of them; each element becomes a record
    or a dead letter of its own. ``received_at`` (epoch ms) is stamped on every record and dead
    letter and is the reference for ``future_ts`` (``ts`` more than ``max_future_ms`` ahead).
    Never raises, whatever the topic and bytes.
    """
    out = ParsedMessage()
    try:
        _parse_into(out, topic, payload, received_at, prefix, max_future_ms)
    except Exception as exc:
        # Last resort: a bug here must not stall ingest nor lose the message. Drop whatever was
        # half-built (it would be duplicated) and keep the raw payload as one dead letter.
        log.exception("parser failed on a message on topic %r", topic)
        out = ParsedMessage()
        out.dead_letters.append(
            DeadLetter(
                topic if type(topic) is str else repr(topic),
                _safe_bytes(payload),
                received_at,
                _REASON.SCHEMA,
                f"internal parser error: {type(exc).__name__}: {exc}",
                None,
            )
        )
    return out


def _parse_into(
    out: ParsedMessage,
    topic: str,
    payload: bytes,
    received_at: int,
    prefix: str,
    max_future_ms: int,
) -> None:
    parsed_topic = parse_topic(topic, prefix)
    device_id = parsed_topic[0] if parsed_topic is not None else None
    if len(payload) > MAX_PAYLOAD_BYTES:
        out.dead_letters.append(
            DeadLetter(
                topic,
                bytes(payload[:MAX_DEAD_PAYLOAD_BYTES]),
                received_at,
                _REASON.TOO_LARGE,
                f"payload is {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} allowed",
                device_id,
            )
        )
        return
    if parsed_topic is None:
        out.dead_letters.append(
            DeadLetter(
                topic,
                bytes(payload[:MAX_DEAD_PAYLOAD_BYTES]),
                received_at,
                _REASON.BAD_TOPIC,
                _topic_problem(topic, prefix),
                None,
            )
        )
        return
    device_id, kind = parsed_topic
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        out.dead_letters.append(
            DeadLetter(
                topic,
                bytes(payload[:MAX_DEAD_PAYLOAD_BYTES]),
                received_at,
                _REASON.BAD_JSON,
                f"payload is not valid UTF-8 JSON: {exc}",
                device_id,
            )
        )
        return

    # One code path for both kinds: the builder and its list are picked together (the checker
    # cannot pair their types, hence Any).
    pair: tuple[Callable[[dict[str, Any], str, int, int], Any], list[Any]] = (
        (_fix, out.fixes) if kind is MessageKind.POSITION else (_lock_event, out.lock_events)
    )
    build, records = pair
    if type(doc) is dict:
        # The common case: one object. The raw payload is what a dead letter keeps.
        try:
            records.append(build(doc, device_id, received_at, max_future_ms))
        except _Rejected as rej:
            out.dead_letters.append(
                DeadLetter(
                    topic,
                    bytes(payload[:MAX_DEAD_PAYLOAD_BYTES]),
                    received_at,
                    rej.reason,
                    rej.message,
                    device_id,
                )
            )
        return
    if type(doc) is not list:
        out.dead_letters.append(
            DeadLetter(
                topic,
                bytes(payload[:MAX_DEAD_PAYLOAD_BYTES]),
                received_at,
                _REASON.SCHEMA,
                f"payload is a JSON {_json_type(doc)}, expected an object or an array of objects",
                device_id,
            )
        )
        return
    if not doc:
        out.dead_letters.append(
            DeadLetter(
                topic,
                bytes(payload[:MAX_DEAD_PAYLOAD_BYTES]),
                received_at,
                _REASON.SCHEMA,
                "payload is an empty JSON array, expected an object or a backlog of objects",
                device_id,
            )
        )
        return
    for i, element in enumerate(doc):
        try:
            if type(element) is not dict:
                raise _Rejected(
                    _REASON.SCHEMA,
                    f"is a JSON {_json_type(element)}, expected an object",
                )
            records.append(build(element, device_id, received_at, max_future_ms))
        except _Rejected as rej:
            out.dead_letters.append(
                _element_dead_letter(
                    topic, payload, element, received_at, rej.reason, rej.message, device_id, i
                )
            )
        except Exception as exc:
            # Same last resort as parse_message, but per element so the rest of the backlog
            # is still accepted.
            log.exception("parser failed on backlog element %d on topic %r", i, topic)
            out.dead_letters.append(
                _element_dead_letter(
                    topic,
                    payload,
                    element,
                    received_at,
                    _REASON.SCHEMA,
                    f"internal parser error: {type(exc).__name__}: {exc}",
                    device_id,
                    i,
                )
            )


def _element_dead_letter(
    topic: str,
    payload: bytes,
    element: Any,
    received_at: int,
    reason: DeadLetterReason,
    detail: str,
    device_id: str,
    index: int,
) -> DeadLetter:
    """A dead letter for one element of a backlog: it keeps that element, re-serialised."""
    try:
        raw = orjson.dumps(element)[:MAX_DEAD_PAYLOAD_BYTES]
    except orjson.JSONEncodeError:
        # orjson writes at most 254 levels but reads 1024: keep the whole raw backlog instead,
        # so nothing is lost.
        raw = bytes(payload[:MAX_DEAD_PAYLOAD_BYTES])
        detail += " (element too deeply nested to re-serialise; whole payload kept)"
    return DeadLetter(
        topic, raw, received_at, reason, f"backlog element [{index}]: {detail}", device_id
    )


# -- elements --------------------------------------------------------------------------------


def _fix(d: dict[str, Any], device_id: str, received_at: int, max_future_ms: int) -> Fix:
    """Validate one position object (``d`` came from orjson, so keys are str)."""
    _check_device_id(d, device_id)
    ts = _ts(d.get("ts", _MISSING), received_at, max_future_ms)
    lat = _coord(d.get("lat", _MISSING), "lat", 90.0)
    lon = _coord(d.get("lon", _MISSING), "lon", 180.0)
    if lat is None or lon is None:
        raise _Rejected(_REASON.SCHEMA, f"{'lat' if lat is None else 'lon'} is required")
    return Fix(
        device_id,
        ts,
        lat,
        lon,
        _opt_float(d, "speed_kmh", 0.0, 400.0),
        _opt_float(d, "heading_deg", 0.0, 360.0),
        _opt_float(d, "hdop", 0.0, 100.0),
        _opt_int(d, "sats", 0, 101),
        _opt_float(d, "battery_pct", 0.0, 100.0),
        _opt_int(d, "seq", 0, MAX_SEQ),
        received_at,
        _extra(d, _FIX_FIELDS),
    )


def _lock_event(
    d: dict[str, Any], device_id: str, received_at: int, max_future_ms: int
) -> LockEvent:
    """Validate one e-lock event object."""
    _check_device_id(d, device_id)
    ts = _ts(d.get("ts", _MISSING), received_at, max_future_ms)
    value = d.get("event", _MISSING)
    event = _EVENTS.get(value) if type(value) is str else None
    if event is None:
        if value is _MISSING:
            raise _Rejected(_REASON.SCHEMA, "event is required")
        raise _Rejected(_REASON.SCHEMA, f"event {_show(value)} is not one of {_EVENT_NAMES}")
    value = d.get("method")
    method = None
    if value is not None:
        method = _METHODS.get(value) if type(value) is str else None
        if method is None:
            raise _Rejected(
                _REASON.SCHEMA,
                f"method {_show(value)} is not one of {_METHOD_NAMES} (or absent/null)",
            )
    lat = _coord(d.get("lat"), "lat", 90.0)
    lon = _coord(d.get("lon"), "lon", 180.0)
    if (lat is None) != (lon is None):
        given, missing = ("lat", "lon") if lon is None else ("lon", "lat")
        raise _Rejected(_REASON.SCHEMA, f"{given} is given without {missing}: send both or neither")
    battery = _opt_float(d, "battery_pct", 0.0, 100.0)
    seq = _opt_int(d, "seq", 0, MAX_SEQ)
    return LockEvent(
        device_id,
        ts,
        event,
        method,
        lat,
        lon,
        battery,
        seq,
        received_at,
        _extra(d, _LOCK_FIELDS),
    )


def _check_device_id(d: dict[str, Any], device_id: str) -> None:
    value = d.get("device_id")
    if value is not None and value != device_id:
        raise _Rejected(
            _REASON.TOPIC_MISMATCH,
            f"payload device_id {_show(value)} differs from the topic's device {device_id!r}",
        )


def _ts(value: Any, received_at: int, max_future_ms: int) -> int:
    """``ts`` as int epoch ms UTC, from RFC 3339 (with an offset) or integer epoch ms."""
    t = type(value)
    ms: int
    if t is int:
        ms = value
    elif t is str:
        ms = _rfc3339_ms(value)
    elif t is float:
        if not value.is_integer():  # also false for inf and nan
            raise _Rejected(
                _REASON.SCHEMA, f"ts {_show(value)} is not an integer number of epoch ms"
            )
        ms = int(value)
    elif value is _MISSING or value is None:
        raise _Rejected(_REASON.SCHEMA, "ts is required")
    else:
        raise _Rejected(
            _REASON.SCHEMA,
            f"ts {_show(value)} must be an RFC 3339 string or integer epoch ms",
        )
    if ms < MIN_TS_MS or ms > MAX_TS_MS:
        raise _Rejected(
            _REASON.OUT_OF_RANGE,
            f"ts {_show(value)} is outside 2000-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z",
        )
    if ms - received_at > max_future_ms:
        raise _Rejected(
            _REASON.FUTURE_TS,
            f"ts {_show(value)} ({format_ts(ms)}) is {ms - received_at} ms ahead of the "
            f"receive time {_show_ts(received_at)}; at most {max_future_ms} ms allowed",
        )
    return ms


def _rfc3339_ms(text: str) -> int:
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise _Rejected(
            _REASON.SCHEMA,
            f"ts {_show(text)} is not an RFC 3339 time with an offset or Z "
            "(e.g. 2026-11-22T08:00:05Z)",
        )
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    hour_i, minute_i, second_i = int(hour), int(minute), int(second)
    try:
        # date() checks month and day-of-month (leap years included) in C.
        days = date(int(year), int(month), int(day)).toordinal() - _UNIX_EPOCH_ORDINAL
    except ValueError as exc:
        raise _Rejected(_REASON.SCHEMA, f"ts {_show(text)} is not a valid date: {exc}") from None
    if hour_i > 23 or minute_i > 59 or second_i > 59:
        # second 60 (a leap second) is refused too: none since 2016, and none after 2035.
        raise _Rejected(_REASON.SCHEMA, f"ts {_show(text)} has an invalid time of day")
    ms = ((days * 24 + hour_i) * 60 + minute_i) * 60_000 + second_i * 1000
    if frac is not None:
        ms += int(frac[:3].ljust(3, "0"))  # sub-millisecond digits are truncated
    if sign is not None:
        off_h_i, off_m_i = int(off_h), int(off_m)
        if off_h_i > 23 or off_m_i > 59:
            raise _Rejected(_REASON.SCHEMA, f"ts {_show(text)} has an invalid UTC offset")
        offset_ms = (off_h_i * 60 + off_m_i) * 60_000
        ms += -offset_ms if sign == "+" else offset_ms
    return ms


def _coord(value: Any, key: str, limit: float) -> float | None:
    """A latitude or longitude within [-limit, limit]; ``None`` when absent or null."""
    t = type(value)
    number: float
    if t is float:
        number = value
    elif t is int:
        number = float(value)
    elif value is _MISSING or value is None:
        return None
    else:
        raise _Rejected(_REASON.SCHEMA, f"{key} {_show(value)} must be a number")
    if not -limit <= number <= limit:  # also false for nan
        raise _Rejected(
            _REASON.OUT_OF_RANGE, f"{key} {_show(value)} is outside [-{limit:g}, {limit:g}]"
        )
    return number


def _opt_float(d: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    """An optional number within [lo, hi]; ``None`` when absent or null."""
    value: Any = d.get(key)
    t = type(value)
    number: float
    if t is float:
        number = value
    elif t is int:
        number = float(value)
    elif value is None:
        return None
    else:
        raise _Rejected(_REASON.SCHEMA, f"{key} {_show(value)} must be a number or null")
    if not lo <= number <= hi:  # also false for nan
        raise _Rejected(_REASON.OUT_OF_RANGE, f"{key} {_show(value)} is outside [{lo:g}, {hi:g}]")
    return number


def _opt_int(d: dict[str, Any], key: str, lo: int, hi_exclusive: int) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if type(value) is not int:
        # Strict on purpose: seq is an idempotency key, a float would lose digits past 2**53.
        raise _Rejected(_REASON.SCHEMA, f"{key} {_show(value)} must be an integer or null")
    if not lo <= value < hi_exclusive:
        raise _Rejected(
            _REASON.OUT_OF_RANGE,
            f"{key} {value} is outside [{lo}, {hi_exclusive - 1}]",
        )
    return value


def _extra(d: dict[str, Any], known: frozenset[str]) -> dict[str, Any] | None:
    if known.issuperset(d):  # no new set: the common no-extras case stays cheap
        return None
    extra = {k: v for k, v in d.items() if k not in known}
    try:
        # orjson reads 1024 levels of nesting but writes only 254: refuse now what the store
        # could not write later.
        orjson.dumps(extra)
    except orjson.JSONEncodeError as exc:
        raise _Rejected(
            _REASON.SCHEMA,
            f"unknown fields {', '.join(map(repr, extra))} cannot be stored: {exc}",
        ) from None
    return extra


# -- helpers ---------------------------------------------------------------------------------


def _show(value: object) -> str:
    """A short repr of a bad value for a dead letter's detail."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _show_ts(ts_ms: int) -> str:
    """``format_ts`` for a detail message, for any value the caller handed us."""
    try:
        return format_ts(ts_ms)
    except (OverflowError, TypeError, ValueError):
        return repr(ts_ms)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    return "object" if type(value) is dict else type(value).__name__


def _safe_bytes(payload: object) -> bytes:
    try:
        return bytes(payload[:MAX_DEAD_PAYLOAD_BYTES])  # type: ignore[index]  # any object: repr below
    except Exception:
        return repr(payload).encode("utf-8", "replace")[:MAX_DEAD_PAYLOAD_BYTES]


# -- the other direction ---------------------------------------------------------------------


def format_ts(ts_ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T08:00:05.000Z``."""
    seconds, ms = divmod(ts_ms, 1000)
    dt = _EPOCH + timedelta(seconds=seconds)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{ms:03d}Z"
    )


def to_payload(record: Fix | LockEvent, *, with_device_id: bool = False) -> dict[str, Any]:
    """Serialise a fix or lock event back to the contract's JSON shape (a plain dict).

    ``ts`` becomes RFC 3339 UTC with milliseconds, ``None`` fields are left out and unknown
    extras are merged back after the known fields. ``device_id`` is included only when asked
    (the topic carries it). ``parse_message`` of ``orjson.dumps`` of the result on the device's
    topic gives the record back.
    """
    out: dict[str, Any] = {}
    if with_device_id:
        out["device_id"] = record.device_id
    out["ts"] = format_ts(record.ts)
    value: object
    if isinstance(record, Fix):
        known = _FIX_FIELDS
        out["lat"] = record.lat
        out["lon"] = record.lon
        for key, value in (
            ("speed_kmh", record.speed_kmh),
            ("heading_deg", record.heading_deg),
            ("hdop", record.hdop),
            ("sats", record.sats),
            ("battery_pct", record.battery_pct),
            ("seq", record.seq),
        ):
            if value is not None:
                out[key] = value
    else:
        known = _LOCK_FIELDS
        out["event"] = record.event.value
        for key, value in (
            ("method", record.method.value if record.method is not None else None),
            ("lat", record.lat),
            ("lon", record.lon),
            ("battery_pct", record.battery_pct),
            ("seq", record.seq),
        ):
            if value is not None:
                out[key] = value
    if record.extra:
        for key, value in record.extra.items():
            if key not in known:
                out[key] = value
    return out
