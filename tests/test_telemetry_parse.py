"""Tests of telemetry.parse: the message validator of contract §2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from telemetry.parse import (
    MAX_DEAD_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    format_ts,
    parse_message,
    parse_topic,
    to_payload,
)

R = DeadLetterReason
POS = "devices/gps-0001/position"
LOCK = "devices/lock-0001/lock"
TS = 1_795_334_405_000  # 2026-11-22T08:00:05Z
NOW = TS + 1_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIX_DOC: dict[str, Any] = {
    "ts": "2026-11-22T08:00:05Z",
    "lat": 31.2304,
    "lon": 121.4737,
    "speed_kmh": 62.5,
    "heading_deg": 270,
    "hdop": 0.9,
    "sats": 11,
    "battery_pct": 88,
    "seq": 1042,
}
LOCK_DOC: dict[str, Any] = {
    "ts": TS,
    "event": "unlocked",
    "method": "rfid",
    "lat": 31.2304,
    "lon": 121.4737,
    "battery_pct": 87,
    "seq": 1043,
}


def ms(text: str) -> int:
    """Reference conversion through datetime (independent of the parser's arithmetic)."""
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(milliseconds=1)


def parse(doc: Any, topic: str = POS, received_at: int = NOW, **kw: Any) -> ParsedMessage:
    return parse_message(topic, orjson.dumps(doc), received_at, **kw)


def one_fix(doc: Any, **kw: Any) -> Fix:
    out = parse(doc, **kw)
    assert out.dead_letters == [] and out.lock_events == []
    assert len(out.fixes) == 1
    return out.fixes[0]


def one_event(doc: Any, **kw: Any) -> LockEvent:
    out = parse(doc, LOCK, **kw)
    assert out.dead_letters == [] and out.fixes == []
    assert len(out.lock_events) == 1
    return out.lock_events[0]


def one_dead(doc: Any, topic: str = POS, **kw: Any) -> DeadLetter:
    out = parse(doc, topic, **kw)
    assert out.fixes == [] and out.lock_events == []
    assert len(out.dead_letters) == 1
    return out.dead_letters[0]


def count(out: ParsedMessage) -> int:
    return len(out.fixes) + len(out.lock_events) + len(out.dead_letters)


# -- topics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (POS, ("gps-0001", MessageKind.POSITION)),
        (LOCK, ("lock-0001", MessageKind.LOCK)),
        ("devices/a/position", ("a", MessageKind.POSITION)),
        ("devices/" + "x" * 64 + "/lock", ("x" * 64, MessageKind.LOCK)),
        ("devices/Az09_.:-/lock", ("Az09_.:-", MessageKind.LOCK)),
    ],
)
def test_parse_topic_accepts_contract_topics(topic: str, expected: tuple[str, MessageKind]) -> None:
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "devices//position",  # empty id
        "devices/" + "x" * 65 + "/position",  # id too long
        "devices/a b/position",
        "devices/a+/position",
        "devices/a#/position",
        "devices/é/position",
        "devices/٣/position",  # a non-ASCII digit
        "devices/a/position\n",
        "devices/a\n/position",
        "devices/a/positions",
        "devices/a/Position",
        "devices/a/alarm",
        "devices/a",
        "devices/a/",
        "devices/a/position/extra",
        "devices/a/b/position",
        "device/a/position",
        "devicesx/a/position",
        "/devices/a/position",
        "other/a/position",
        "",
        "devices",
    ],
)
def test_parse_topic_refuses_malformed_topics(topic: str) -> None:
    assert parse_topic(topic) is None


def test_parse_topic_with_custom_and_empty_prefix() -> None:
    assert parse_topic("fleet/v1/t1/lock", "fleet/v1") == ("t1", MessageKind.LOCK)
    assert parse_topic("devices/t1/lock", "fleet/v1") is None
    assert parse_topic("t1/position", "") == ("t1", MessageKind.POSITION)
    assert parse_topic("x/t1/position", "") is None


def test_parse_topic_never_raises_on_non_strings() -> None:
    assert parse_topic(b"devices/a/position") is None  # type: ignore[arg-type]
    assert parse_topic(None) is None  # type: ignore[arg-type]


# -- the contract examples and timestamps ------------------------------------------------------


def test_contract_position_example() -> None:
    fix = one_fix(FIX_DOC)
    assert fix == Fix(
        device_id="gps-0001",
        ts=TS,
        lat=31.2304,
        lon=121.4737,
        speed_kmh=62.5,
        heading_deg=270.0,
        hdop=0.9,
        sats=11,
        battery_pct=88.0,
        seq=1042,
        received_at=NOW,
    )
    assert fix.extra is None
    assert type(fix.heading_deg) is float and type(fix.sats) is int


def test_contract_lock_example() -> None:
    event = one_event(LOCK_DOC)
    assert event == LockEvent(
        device_id="lock-0001",
        ts=TS,
        event=LockEventType.UNLOCKED,
        method=UnlockMethod.RFID,
        lat=31.2304,
        lon=121.4737,
        battery_pct=87.0,
        seq=1043,
        received_at=NOW,
    )
    assert event.extra is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-22T08:00:05Z",
        "2026-11-22T08:00:05z",
        "2026-11-22t08:00:05Z",
        "2026-11-22 08:00:05Z",
        "2026-11-22T08:00:05+00:00",
        "2026-11-22T08:00:05-00:00",
        "2026-11-22T16:00:05+08:00",
        "2026-11-22T02:30:05-05:30",
        "2026-11-22T21:45:05+13:45",
        "2026-11-21T08:01:05-23:59",
        "2026-11-23T07:59:05+23:59",
    ],
)
def test_rfc3339_with_any_offset(text: str) -> None:
    assert one_fix({**FIX_DOC, "ts": text}).ts == TS


@pytest.mark.parametrize(
    ("fraction", "extra_ms"),
    [(".1", 100), (".12", 120), (".123", 123), (".1239", 123), (".999999999", 999), (".0", 0)],
)
def test_rfc3339_fractional_seconds_truncate_to_ms(fraction: str, extra_ms: int) -> None:
    text = f"2026-11-22T16:00:05{fraction}+08:00"
    assert one_fix({**FIX_DOC, "ts": text}).ts == TS + extra_ms


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-29T12:00:00Z",
        "2000-01-01T00:00:00Z",
        "2026-12-31T23:59:59.999+05:00",
        "2016-12-31T23:59:59Z",
    ],
)
def test_rfc3339_matches_datetime(text: str) -> None:
    received = ms(text)
    assert one_fix({**FIX_DOC, "ts": text}, received_at=received).ts == received


def test_epoch_ms_integer_and_integral_float() -> None:
    assert one_fix({**FIX_DOC, "ts": TS}).ts == TS
    fix = one_fix({**FIX_DOC, "ts": float(TS)})
    assert fix.ts == TS and type(fix.ts) is int


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-22T08:00:05",  # naive
        "2026-11-22T08:00:05.123",  # naive with fraction
        "2026-11-22",
        "2026-11-22T08:00Z",  # no seconds
        "20261122T080005Z",  # ISO 8601 basic format
        "2026-W47-7T08:00:05Z",
        "2026-11-22T08:00:05+0800",
        "2026-11-22T08:00:05+08",
        "2026-11-22T08:00:05.Z",
        "2026-11-30T24:00:00Z",
        "2026-11-22T08:60:05Z",
        "2016-12-31T23:59:60Z",  # leap second
        "2026-02-29T08:00:05Z",  # not a leap year
        "2026-13-01T08:00:05Z",
        "2026-00-10T08:00:05Z",
        "2026-11-00T08:00:05Z",
        "2026-11-22T08:00:05+24:00",
        "2026-11-22T08:00:05+08:60",
        "２026-11-22T08:00:05Z",  # a full-width digit
        " 2026-11-22T08:00:05Z",
        "1795334405000",  # epoch ms as a string
        "",
        True,
        False,
        1_795_334_405_000.5,
        [TS],
        {"ms": TS},
    ],
)
def test_bad_ts_is_schema(value: Any) -> None:
    dead = one_dead({**FIX_DOC, "ts": value})
    assert dead.reason is R.SCHEMA
    assert dead.detail.startswith("ts ")


@pytest.mark.parametrize("doc", [{"lat": 1.0, "lon": 2.0}, {"ts": None, "lat": 1.0, "lon": 2.0}])
def test_missing_ts_is_schema(doc: dict[str, Any]) -> None:
    dead = one_dead(doc)
    assert (dead.reason, dead.detail) == (R.SCHEMA, "ts is required")


def test_ts_lower_bound_is_2000() -> None:
    assert one_fix({**FIX_DOC, "ts": MIN_TS_MS}).ts == MIN_TS_MS
    assert one_fix({**FIX_DOC, "ts": "2000-01-01T08:00:00+08:00"}).ts == MIN_TS_MS
    for value in (
        MIN_TS_MS - 1,
        "1999-12-31T23:59:59.999Z",
        "2000-01-01T00:00:00.000+00:01",
        0,
        -1,
    ):
        dead = one_dead({**FIX_DOC, "ts": value})
        assert dead.reason is R.OUT_OF_RANGE, value
        assert "ts" in dead.detail and "2000-01-01" in dead.detail


def test_ts_upper_bound_is_absurd_not_future() -> None:
    far = 2**64  # so that only the absolute bound can refuse
    assert one_fix({**FIX_DOC, "ts": MAX_TS_MS}, max_future_ms=far).ts == MAX_TS_MS
    assert one_fix({**FIX_DOC, "ts": "9999-12-31T23:59:59.999Z"}, max_future_ms=far).ts == MAX_TS_MS
    for value in (MAX_TS_MS + 1, 2**64 - 1, 2.0**70, "9999-12-31T23:59:59.999-00:01"):
        assert one_dead({**FIX_DOC, "ts": value}, max_future_ms=far).reason is R.OUT_OF_RANGE


@pytest.mark.parametrize("topic", [POS, LOCK])
def test_future_ts_boundary(topic: str) -> None:
    doc = FIX_DOC if topic == POS else LOCK_DOC
    at_limit = parse({**doc, "ts": NOW + 300_000}, topic)
    assert count(at_limit) == 1 and at_limit.dead_letters == []
    dead = one_dead({**doc, "ts": NOW + 300_001}, topic)
    assert dead.reason is R.FUTURE_TS
    assert "300001 ms ahead" in dead.detail
    # RFC 3339 form and a configured limit.
    iso = format_ts(NOW + 60_001)
    assert one_dead({**doc, "ts": iso}, topic, max_future_ms=60_000).reason is R.FUTURE_TS
    assert count(parse({**doc, "ts": format_ts(NOW + 60_000)}, topic, max_future_ms=60_000)) == 1


def test_past_ts_is_fine() -> None:
    assert one_fix({**FIX_DOC, "ts": MIN_TS_MS + 1}).ts == MIN_TS_MS + 1


# -- position fields -------------------------------------------------------------------------

# field -> (accepted at the limit, refused just past it)
FIX_LIMITS: dict[str, tuple[list[Any], list[Any]]] = {
    "lat": ([-90, -90.0, 90, 90.0, 0, -0.0], [-90.000001, 90.000001, -91, 1e308, -1e308]),
    "lon": ([-180, -180.0, 180, 180.0], [-180.000001, 180.000001, 181, 2**64 - 1]),
    "speed_kmh": ([0, 0.0, 400, 400.0], [-0.000001, 400.000001, -1]),
    "heading_deg": ([0, 360, 360.0, 359.9], [-0.000001, 360.000001, 361]),
    "hdop": ([0, 0.0, 100, 100.0], [-0.000001, 100.000001]),
    "sats": ([0, 100], [-1, 101, 2**64 - 1]),
    "battery_pct": ([0, 0.0, 100, 100.0], [-0.000001, 100.000001]),
    "seq": ([0, 2**63 - 1], [-1, 2**63, 2**64 - 1, -(2**63)]),
}


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, (ok, _) in FIX_LIMITS.items() for v in ok],
)
def test_fix_field_accepted_at_limit(field: str, value: Any) -> None:
    fix = one_fix({**FIX_DOC, field: value})
    got = getattr(fix, field)
    assert got == value
    assert type(got) is (int if field in ("sats", "seq") else float)


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, (_, bad) in FIX_LIMITS.items() for v in bad],
)
def test_fix_field_refused_past_limit(field: str, value: Any) -> None:
    dead = one_dead({**FIX_DOC, field: value})
    assert dead.reason is R.OUT_OF_RANGE
    assert dead.detail.startswith(f"{field} ")
    assert repr(value)[:10] in dead.detail or str(value)[:10] in dead.detail


@pytest.mark.parametrize("field", list(FIX_LIMITS))
@pytest.mark.parametrize("value", [True, False, "1", "", [], [1], {}, {"v": 1}])
def test_fix_field_wrong_type_is_schema(field: str, value: Any) -> None:
    dead = one_dead({**FIX_DOC, field: value})
    assert dead.reason is R.SCHEMA
    assert dead.detail.startswith(f"{field} ")


@pytest.mark.parametrize(("field", "value"), [("sats", 11.0), ("seq", 1042.0), ("sats", 1.5)])
def test_integer_fields_refuse_floats(field: str, value: float) -> None:
    assert one_dead({**FIX_DOC, field: value}).reason is R.SCHEMA


@pytest.mark.parametrize("field", ["lat", "lon"])
def test_fix_requires_lat_lon(field: str) -> None:
    doc = {k: v for k, v in FIX_DOC.items() if k != field}
    dead = one_dead(doc)
    assert (dead.reason, dead.detail) == (R.SCHEMA, f"{field} is required")
    assert one_dead({**FIX_DOC, field: None}).reason is R.SCHEMA


@pytest.mark.parametrize(
    "field", ["speed_kmh", "heading_deg", "hdop", "sats", "battery_pct", "seq"]
)
def test_fix_optional_fields_absent_or_null(field: str) -> None:
    absent = one_fix({k: v for k, v in FIX_DOC.items() if k != field})
    null = one_fix({**FIX_DOC, field: None})
    assert getattr(absent, field) is None and getattr(null, field) is None
    assert absent == null


def test_minimal_fix() -> None:
    fix = one_fix({"ts": TS, "lat": 0, "lon": 0})
    assert fix == Fix("gps-0001", TS, 0.0, 0.0, received_at=NOW)


def test_first_failing_field_decides() -> None:
    # ts is checked before lat; lat (out of range) before speed (wrong type).
    assert one_dead({**FIX_DOC, "ts": "x", "lat": 100}).reason is R.SCHEMA
    dead = one_dead({**FIX_DOC, "lat": 100, "speed_kmh": "fast"})
    assert dead.reason is R.OUT_OF_RANGE and dead.detail.startswith("lat 100")


# -- lock events -----------------------------------------------------------------------------


@pytest.mark.parametrize("event", list(LockEventType))
def test_every_lock_event_type(event: LockEventType) -> None:
    got = one_event({"ts": TS, "event": event.value})
    assert got.event is event
    assert (got.method, got.lat, got.lon, got.battery_pct, got.seq) == (None,) * 5


@pytest.mark.parametrize("method", [*UnlockMethod, None])
def test_every_unlock_method(method: UnlockMethod | None) -> None:
    doc = {**LOCK_DOC, "method": method.value if method else None}
    assert one_event(doc).method is method
    del doc["method"]
    assert one_event(doc).method is None


@pytest.mark.parametrize(
    "doc",
    [
        {"ts": TS},
        {"ts": TS, "event": None},
        {"ts": TS, "event": "opened"},
        {"ts": TS, "event": "UNLOCKED"},
        {"ts": TS, "event": 1},
        {"ts": TS, "event": ["locked"]},
        {"ts": TS, "event": "locked", "method": "magic"},
        {"ts": TS, "event": "locked", "method": "RFID"},
        {"ts": TS, "event": "locked", "method": 3},
        {"ts": TS, "event": "locked", "lat": 31.0},
        {"ts": TS, "event": "locked", "lon": 121.0},
        {"ts": TS, "event": "locked", "lat": 31.0, "lon": None},
        {"ts": TS, "event": "locked", "lat": "31", "lon": 121.0},
        {"ts": TS, "event": "locked", "battery_pct": "full"},
        {"ts": TS, "event": "locked", "seq": 1.0},
    ],
)
def test_bad_lock_event_is_schema(doc: dict[str, Any]) -> None:
    dead = one_dead(doc, LOCK)
    assert dead.reason is R.SCHEMA
    assert dead.device_id == "lock-0001"


LOCK_LIMITS: dict[str, tuple[list[Any], list[Any]]] = {
    k: FIX_LIMITS[k] for k in ("lat", "lon", "battery_pct", "seq")
}


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [(f, v, True) for f, (good, _) in LOCK_LIMITS.items() for v in good]
    + [(f, v, False) for f, (_, bad) in LOCK_LIMITS.items() for v in bad],
)
def test_lock_field_limits(field: str, value: Any, ok: bool) -> None:
    doc = {**LOCK_DOC, field: value}
    if ok:
        assert getattr(one_event(doc), field) == value
    else:
        dead = one_dead(doc, LOCK)
        assert dead.reason is R.OUT_OF_RANGE and dead.detail.startswith(f"{field} ")


def test_lock_position_is_optional_and_out_of_range_checked_alone() -> None:
    got = one_event({"ts": TS, "event": "locked", "lat": None, "lon": None})
    assert got.lat is None and got.lon is None
    # A lone coordinate that is out of range says so (ranges are validated first).
    assert one_dead({"ts": TS, "event": "locked", "lat": 91}, LOCK).reason is R.OUT_OF_RANGE


def test_fix_payload_on_lock_topic_is_schema() -> None:
    dead = one_dead(FIX_DOC, "devices/gps-0001/lock")
    assert (dead.reason, dead.detail) == (R.SCHEMA, "event is required")


# -- device id, extras -----------------------------------------------------------------------


def test_payload_device_id_matching_topic_is_fine_and_not_extra() -> None:
    fix = one_fix({**FIX_DOC, "device_id": "gps-0001"})
    assert fix.extra is None
    assert one_fix({**FIX_DOC, "device_id": None}).extra is None


@pytest.mark.parametrize("value", ["gps-0002", "GPS-0001", "", 1, ["gps-0001"]])
@pytest.mark.parametrize("topic", [POS, LOCK])
def test_topic_mismatch(value: Any, topic: str) -> None:
    doc = FIX_DOC if topic == POS else LOCK_DOC
    dead = one_dead({**doc, "device_id": value}, topic)
    assert dead.reason is R.TOPIC_MISMATCH
    assert "device_id" in dead.detail and repr(value) in dead.detail
    assert dead.device_id == parse_topic(topic)[0]  # type: ignore[index]


def test_extras_are_kept_only_unknown() -> None:
    extras = {"odometer_km": 12345.6, "driver": {"id": "D7", "tags": [1, None]}, "ign": True}
    fix = one_fix({**FIX_DOC, **extras, "device_id": "gps-0001"})
    assert fix.extra == extras
    assert list(fix.extra) == list(extras)  # order of the payload
    event = one_event({**LOCK_DOC, "rssi": -71, "Event": "x"})
    assert event.extra == {"rssi": -71, "Event": "x"}


def nested(depth: int) -> bytes:
    """JSON nested deeper than orjson writes (254) but not deeper than it reads (1024)."""
    return b"[" * depth + b"1" + b"]" * depth


def test_extras_nested_too_deep_to_store_are_refused() -> None:
    payload = orjson.dumps(FIX_DOC)[:-1] + b',"blob":' + nested(300) + b"}"
    out = parse_message(POS, payload, NOW)
    assert out.fixes == [] and len(out.dead_letters) == 1
    dead = out.dead_letters[0]
    assert dead.reason is R.SCHEMA and "'blob'" in dead.detail and dead.payload == payload


# -- whole-message reasons -------------------------------------------------------------------


def test_too_large() -> None:
    pad = MAX_PAYLOAD_BYTES - len(orjson.dumps({**FIX_DOC, "pad": ""}))
    exact = orjson.dumps({**FIX_DOC, "pad": "x" * pad})
    assert len(exact) == MAX_PAYLOAD_BYTES
    ok = parse_message(POS, exact, NOW)
    assert len(ok.fixes) == 1 and ok.dead_letters == []

    over = orjson.dumps({**FIX_DOC, "pad": "x" * (pad + 1)})
    out = parse_message(POS, over, NOW)
    assert out.fixes == [] and len(out.dead_letters) == 1
    dead = out.dead_letters[0]
    assert dead.reason is R.TOO_LARGE
    assert dead.payload == over[:MAX_DEAD_PAYLOAD_BYTES]
    assert len(dead.payload) == MAX_DEAD_PAYLOAD_BYTES == 64 * 1024
    assert (dead.topic, dead.received_at, dead.device_id) == (POS, NOW, "gps-0001")
    assert str(len(over)) in dead.detail


def test_too_large_array_is_one_dead_letter() -> None:
    backlog = [FIX_DOC] * (MAX_PAYLOAD_BYTES // len(orjson.dumps(FIX_DOC)) + 1)
    out = parse(backlog)
    assert out.fixes == [] and [d.reason for d in out.dead_letters] == [R.TOO_LARGE]


@pytest.mark.parametrize(
    "topic",
    ["devices/a b/position", "devices/a/alarm", "other/a/position", "devices/a/position/x", ""],
)
def test_bad_topic(topic: str) -> None:
    payload = orjson.dumps(FIX_DOC)
    out = parse_message(topic, payload, NOW)
    assert count(out) == 1
    dead = out.dead_letters[0]
    assert dead == DeadLetter(topic, payload, NOW, R.BAD_TOPIC, dead.detail, None)
    assert dead.detail


def test_bad_topic_details_say_what_is_wrong() -> None:
    def detail(topic: str) -> str:
        return parse_message(topic, b"{}", NOW).dead_letters[0].detail

    assert "'devices/'" in detail("other/a/position")
    assert "'a b'" in detail("devices/a b/position")
    assert "'alarm'" in detail("devices/a/alarm")
    assert "levels" in detail("devices/a/position/x")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b" ",
        b"{",
        b'{"ts": 1,}',
        b"{'ts': 1}",
        b'{"lat": NaN}',
        b'{"lat": Infinity}',
        b'{"lat": 1e400}',
        b'{"ts": "\xff\xfe"}',
        b'{"ts": "\xed\xa0\x80"}',  # an encoded surrogate
        b'{"ts": "\\ud800"}',
        b"\xef\xbb\xbf{}",
        b"{} {}",
        b"\x00",
    ],
)
def test_bad_json(payload: bytes) -> None:
    out = parse_message(POS, payload, NOW)
    assert count(out) == 1
    dead = out.dead_letters[0]
    assert dead == DeadLetter(POS, payload, NOW, R.BAD_JSON, dead.detail, "gps-0001")
    assert dead.detail.startswith("payload is not valid UTF-8 JSON")


def test_bad_json_payload_is_truncated_in_dead_letter() -> None:
    payload = b"{" + b" " * (100 * 1024)
    dead = parse_message(POS, payload, NOW).dead_letters[0]
    assert dead.reason is R.BAD_JSON and dead.payload == payload[:MAX_DEAD_PAYLOAD_BYTES]


@pytest.mark.parametrize("payload", [b"1", b"1.5", b'"fix"', b"null", b"true", b"false"])
@pytest.mark.parametrize("topic", [POS, LOCK])
def test_top_level_scalars_are_schema(payload: bytes, topic: str) -> None:
    out = parse_message(topic, payload, NOW)
    assert count(out) == 1
    dead = out.dead_letters[0]
    assert dead.reason is R.SCHEMA and dead.payload == payload
    assert "expected an object or an array" in dead.detail


def test_bytes_like_payloads() -> None:
    raw = orjson.dumps(FIX_DOC)
    for payload in (bytearray(raw), memoryview(raw)):
        assert len(parse_message(POS, payload, NOW).fixes) == 1  # type: ignore[arg-type]
    dead = parse_message(POS, memoryview(b"nope"), NOW).dead_letters[0]  # type: ignore[arg-type]
    assert dead.payload == b"nope" and type(dead.payload) is bytes


def test_never_raises_on_nonsense_arguments() -> None:
    for payload in (None, 12345, object()):
        out = parse_message(POS, payload, NOW)  # type: ignore[arg-type]
        assert count(out) == 1 and out.dead_letters[0].reason is R.SCHEMA
        assert "internal parser error" in out.dead_letters[0].detail
    out = parse_message(None, b"{}", NOW)  # type: ignore[arg-type]
    assert [d.reason for d in out.dead_letters] == [R.BAD_TOPIC]
    # A receive time that cannot be formatted still gives a clear future_ts.
    out = parse(FIX_DOC, received_at=-(10**20))
    assert [d.reason for d in out.dead_letters] == [R.FUTURE_TS]


# -- backlogs --------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", [POS, LOCK])
@pytest.mark.parametrize("payload", [b"[]", b" [ ]\n"])
def test_empty_backlog_is_a_dead_letter(topic: str, payload: bytes) -> None:
    out = parse_message(topic, payload, NOW)
    assert out.fixes == [] and out.lock_events == []
    [dead] = out.dead_letters
    assert dead.reason is R.SCHEMA and "empty JSON array" in dead.detail
    assert dead.payload == payload and dead.topic == topic and dead.received_at == NOW
    assert dead.device_id == topic.split("/")[1]


def test_backlog_mixed_good_and_bad() -> None:
    good1 = {**FIX_DOC, "ts": TS - 2000, "seq": 1}
    good2 = {**FIX_DOC, "ts": TS - 1000, "seq": 2, "note": "kept"}
    big_bad = {**FIX_DOC, "lat": 91, "pad": "x" * (70 * 1024)}
    backlog = [
        good1,
        {**FIX_DOC, "lat": 95.5},
        7,
        good2,
        {**FIX_DOC, "ts": NOW + 300_001},
        ["nested"],
        None,
        {**FIX_DOC, "device_id": "other"},
        big_bad,
    ]
    out = parse(backlog)
    assert [f.seq for f in out.fixes] == [1, 2]
    assert out.fixes[1].extra == {"note": "kept"}
    assert all(f.received_at == NOW for f in out.fixes)
    dead = out.dead_letters
    assert [d.reason for d in dead] == [
        R.OUT_OF_RANGE,
        R.SCHEMA,
        R.FUTURE_TS,
        R.SCHEMA,
        R.SCHEMA,
        R.TOPIC_MISMATCH,
        R.OUT_OF_RANGE,
    ]
    assert [d.detail.split("]")[0] for d in dead] == [
        f"backlog element [{i}" for i in (1, 2, 4, 5, 6, 7, 8)
    ]
    assert "lat 95.5" in dead[0].detail
    assert "JSON number" in dead[1].detail and "JSON array" in dead[3].detail
    # Each dead letter keeps its own element, re-serialised, truncated at 64 KiB.
    assert orjson.loads(dead[0].payload) == backlog[1]
    assert dead[1].payload == b"7" and dead[4].payload == b"null"
    assert dead[6].payload == orjson.dumps(big_bad)[:MAX_DEAD_PAYLOAD_BYTES]
    assert len(dead[6].payload) == MAX_DEAD_PAYLOAD_BYTES
    for d in dead:
        assert (d.topic, d.received_at, d.device_id) == (POS, NOW, "gps-0001")


def test_lock_backlog() -> None:
    out = parse([LOCK_DOC, {**LOCK_DOC, "event": "tamper", "method": None}, {"ts": TS}], LOCK)
    assert [e.event for e in out.lock_events] == [LockEventType.UNLOCKED, LockEventType.TAMPER]
    assert [d.reason for d in out.dead_letters] == [R.SCHEMA]


def test_backlog_element_too_deep_to_reserialise_keeps_whole_payload() -> None:
    payload = b"[" + orjson.dumps(FIX_DOC) + b"," + nested(300) + b"]"
    out = parse_message(POS, payload, NOW)
    assert len(out.fixes) == 1
    (dead,) = out.dead_letters
    assert dead.reason is R.SCHEMA and dead.payload == payload
    assert "whole payload kept" in dead.detail


# -- to_payload ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (TS, "2026-11-22T08:00:05.000Z"),
        (TS + 7, "2026-11-22T08:00:05.007Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (MAX_TS_MS, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_ts(ts: int, text: str) -> None:
    assert format_ts(ts) == text


def test_to_payload_shapes() -> None:
    fix = one_fix({**FIX_DOC, "odo": 5})
    assert to_payload(fix) == {**FIX_DOC, "ts": "2026-11-22T08:00:05.000Z", "odo": 5}
    assert list(to_payload(fix))[:3] == ["ts", "lat", "lon"]
    assert to_payload(fix, with_device_id=True)["device_id"] == "gps-0001"
    assert to_payload(Fix("d", TS, 1.0, 2.0)) == {"ts": format_ts(TS), "lat": 1.0, "lon": 2.0}
    event = LockEvent("d", TS, LockEventType.LOCKED, extra={"event": "shadowed", "k": 1})
    assert to_payload(event) == {"ts": format_ts(TS), "event": "locked", "k": 1}
    assert to_payload(one_event(LOCK_DOC)) == {**LOCK_DOC, "ts": format_ts(TS)}


# -- properties ------------------------------------------------------------------------------

TOPICS = st.one_of(
    st.sampled_from([POS, LOCK, "devices/x/position", "devices/x/lock", "devices//lock"]),
    st.text(max_size=30),
    st.builds(
        lambda i, k: f"devices/{i}/{k}",
        st.text(max_size=70),
        st.sampled_from(["position", "lock", "other", ""]),
    ),
)
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    SAFE_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(SAFE_TEXT, inner, max_size=5)
    ),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    [
        *("ts", "lat", "lon", "speed_kmh", "heading_deg", "hdop", "sats", "battery_pct", "seq"),
        *("device_id", "event", "method", "extra"),
    ]
)
# Objects that look like messages: known field names with arbitrary or plausible values.
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from([TS, NOW + 300_001, "2026-11-22T08:00:05Z", "locked", "rfid", "x", 90, 180]),
)
MESSAGE_LIKE = st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=10)


def check_accounting(topic: str, payload: bytes, out: ParsedMessage) -> None:
    """Every input is accounted for: one outcome per element of a non-empty backlog, else one
    for the whole message."""
    assert isinstance(out, ParsedMessage)
    for d in out.dead_letters:
        assert isinstance(d.reason, DeadLetterReason) and d.detail
        assert len(d.payload) <= MAX_DEAD_PAYLOAD_BYTES
        assert d.topic == topic and d.received_at == NOW
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    if parse_topic(topic) is not None and type(doc) is list and doc:
        assert count(out) == len(doc)
    else:
        assert count(out) == 1
    kind = parse_topic(topic)
    if kind is None or kind[1] is MessageKind.LOCK:
        assert out.fixes == []
    if kind is None or kind[1] is MessageKind.POSITION:
        assert out.lock_events == []
    for rec in [*out.fixes, *out.lock_events]:
        assert rec.device_id == kind[0]  # type: ignore[index]
        assert MIN_TS_MS <= rec.ts <= NOW + 300_000 and rec.received_at == NOW


@settings(max_examples=300, deadline=None)
@given(TOPICS, st.binary(max_size=200))
def test_property_arbitrary_bytes_never_raise(topic: str, payload: bytes) -> None:
    check_accounting(topic, payload, parse_message(topic, payload, NOW))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([POS, LOCK, "devices/bad topic/lock"]),
    st.one_of(
        JSON_VALUES,
        MESSAGE_LIKE,
        st.lists(st.one_of(MESSAGE_LIKE, JSON_VALUES), max_size=6),
    ),
)
def test_property_arbitrary_json_never_raises(topic: str, doc: Any) -> None:
    payload = orjson.dumps(doc)
    check_accounting(topic, payload, parse_message(topic, payload, NOW))


EXTRA_KEYS = SAFE_TEXT.filter(
    lambda k: (
        k not in {"ts", "lat", "lon", "speed_kmh", "heading_deg", "hdop", "sats"}
        and k not in {"battery_pct", "seq", "device_id", "event", "method"}
    )
)
EXTRAS = st.one_of(st.none(), st.dictionaries(EXTRA_KEYS, JSON_VALUES, min_size=1, max_size=4))
TS_MS = st.integers(min_value=MIN_TS_MS, max_value=NOW + 300_000)


def bounded(lo: float, hi: float) -> st.SearchStrategy[float | None]:
    return st.one_of(st.none(), st.floats(min_value=lo, max_value=hi))


def ints(lo: int, hi: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(min_value=lo, max_value=hi))


FIXES = st.builds(
    Fix,
    device_id=st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True),
    ts=TS_MS,
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    speed_kmh=bounded(0, 400),
    heading_deg=bounded(0, 360),
    hdop=bounded(0, 100),
    sats=ints(0, 100),
    battery_pct=bounded(0, 100),
    seq=ints(0, 2**63 - 1),
    received_at=st.just(NOW),
    extra=EXTRAS,
)
LOCK_EVENTS = st.builds(
    lambda device_id, ts, event, method, pos, battery, seq, extra: LockEvent(
        device_id,
        ts,
        event,
        method,
        pos[0] if pos else None,
        pos[1] if pos else None,
        battery,
        seq,
        NOW,
        extra,
    ),
    st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True),
    TS_MS,
    st.sampled_from(LockEventType),
    st.one_of(st.none(), st.sampled_from(UnlockMethod)),
    st.one_of(
        st.none(),
        st.tuples(st.floats(min_value=-90, max_value=90), st.floats(min_value=-180, max_value=180)),
    ),
    bounded(0, 100),
    ints(0, 2**63 - 1),
    EXTRAS,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(FIXES, LOCK_EVENTS), st.booleans())
def test_property_round_trip(record: Fix | LockEvent, with_device_id: bool) -> None:
    kind = "position" if isinstance(record, Fix) else "lock"
    topic = f"devices/{record.device_id}/{kind}"
    payload = orjson.dumps(to_payload(record, with_device_id=with_device_id))
    out = parse_message(topic, payload, NOW)
    assert out.dead_letters == []
    (got,) = out.fixes or out.lock_events
    assert got == record
    assert got.extra == record.extra
    # The same record with ts as epoch ms.
    as_ms = parse({**to_payload(record), "ts": record.ts}, topic)
    assert [*as_ms.fixes, *as_ms.lock_events] == [record]


@given(st.integers(min_value=MIN_TS_MS, max_value=MAX_TS_MS))
def test_property_format_ts_is_rfc3339_of_the_same_instant(ts: int) -> None:
    text = format_ts(ts)
    assert datetime.fromisoformat(text) == EPOCH + timedelta(milliseconds=ts)
    assert one_fix({"ts": text, "lat": 0, "lon": 0}, received_at=ts).ts == ts
