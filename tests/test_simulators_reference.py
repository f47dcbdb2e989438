"""The reference reading of the contract used to check scenarios: its parser's reasons, and
its rules on hand-made message sequences (so a scenario check can fail for the right cause)."""

from __future__ import annotations

import functools

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators import SimMessage, build_scenario
from simulators.reference import evaluate, parse_message, parse_ts

T = 1_795_334_400_000
REG = {"gps-1", "lock-1"}


def msg(body, device: str = "gps-1", topic: str = "position", at: int = T) -> SimMessage:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return SimMessage(topic, device, raw, at)


FIX = {"ts": T, "lat": -16.9, "lon": 145.7, "speed_kmh": 40.0}


@pytest.mark.parametrize(
    ("m", "reason"),
    [
        (msg(b"{oops"), "bad_json"),
        (msg(b"\xff\xfe"), "bad_json"),
        (msg(42), "schema"),
        (msg({"lat": 1, "lon": 2}), "schema"),
        (msg({**FIX, "lat": "x"}), "schema"),
        (msg({**FIX, "lat": 91}), "out_of_range"),
        (msg({**FIX, "battery_pct": 101}), "out_of_range"),
        (msg({**FIX, "device_id": "gps-2"}), "topic_mismatch"),
        (msg(FIX, device="gps-9"), "unknown_device"),
        (msg(FIX, device="gps 1"), "bad_topic"),
        (msg({**FIX, "pad": "x" * 300_000}), "too_large"),
        (msg({**FIX, "ts": T + 301_000}), "future_ts"),
        (msg({"ts": T, "event": "opened"}, device="lock-1", topic="lock"), "schema"),
        (msg({"ts": T, "event": "unlocked", "method": "magic"}, "lock-1", "lock"), "schema"),
        (msg({**FIX, "ts": "2026-11-22T08:00:00"}), "schema"),  # no offset
    ],
)
def test_parser_reasons(m: SimMessage, reason: str) -> None:
    recs, dls = parse_message(m, REG)
    assert not recs and [d["reason"] for d in dls] == [reason]


def test_parser_accepts_good_messages_and_splits_backlogs() -> None:
    recs, dls = parse_message(
        msg([FIX, {**FIX, "ts": T - 10_000, "lat": 99}, {**FIX, "ts": "2026-11-22T08:00:00Z"}]), REG
    )
    assert [d["reason"] for d in dls] == ["out_of_range"]
    assert [r.ts for r in recs] == [T, parse_ts("2026-11-22T08:00:00Z")]
    recs, _ = parse_message(msg({"ts": T, "event": "heartbeat"}, "lock-1", "lock"), REG)
    assert recs[0].kind == "lock" and recs[0].body["event"] == "heartbeat"


@given(st.binary(max_size=300))
def test_parser_never_raises(raw: bytes) -> None:
    recs, dls = parse_message(msg(raw), REG)
    if not recs and not dls:
        assert orjson.loads(raw) == []  # an empty backlog is nothing at all


@functools.cache
def normal():
    return build_scenario("normal", seed=4, start_ms=T)


def test_rules_catch_an_injected_incident() -> None:
    """The reference is not blind: a tamper event injected into a clean trip is an alarm,
    and the same event before the seal (trip not active) is not."""
    t = normal()
    assert evaluate(t).alarms == []
    lock = next(d["device_id"] for d in t.devices if d["kind"] == "lock")
    mid = (t.marks["departed"] + t.marks["unsealed"]) // 2
    for at, n in ((mid, 1), (t.marks["power_on"] + 1_000, 0)):
        t2 = build_scenario("normal", seed=4, start_ms=T)
        extra = msg({"ts": at, "event": "rope_cut"}, device=lock, topic="lock", at=at)
        t2.__dict__["messages"] = sorted([*t.messages, extra], key=lambda m: m.at_ms)
        alarms = evaluate(t2).alarms
        assert [a["type"] for a in alarms] == ["LOCK_TAMPER"] * n


def test_rules_catch_silence_and_speed() -> None:
    t = normal()
    gps = next(d["device_id"] for d in t.devices if "position" in d["topics"])
    mid = (t.marks["departed"] + t.marks["unsealed"]) // 2
    t2 = build_scenario("normal", seed=4, start_ms=T)
    quiet = [m for m in t.messages if not (mid <= m.at_ms < mid + 700_000)]
    fast = []
    for m in quiet:
        if (
            m.device_id == gps
            and m.topic_suffix == "position"
            and mid + 700_000 <= m.at_ms < mid + 800_000
        ):
            body = orjson.loads(m.payload)
            body["speed_kmh"] = 95.0
            m = SimMessage(m.topic_suffix, m.device_id, orjson.dumps(body), m.at_ms)
        fast.append(m)
    t2.__dict__["messages"] = fast
    types = sorted(a["type"] for a in evaluate(t2).alarms)
    assert types == ["SIGNAL_LOST", "SPEEDING"]
