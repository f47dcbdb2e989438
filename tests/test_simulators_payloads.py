"""Device payloads: timestamp styles, field order, compact encoding."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from simulators.payloads import (
    EPOCH_MS,
    RFC3339,
    DeviceSpec,
    encode,
    fix_bodies,
    format_ts,
    lock_body,
)


@given(st.lists(st.integers(946_684_800_000, 4_102_444_800_000), min_size=1, max_size=20))
def test_rfc3339_round_trips(ts: list[int]) -> None:
    text = format_ts(np.array(ts), RFC3339)
    for t, s in zip(ts, text, strict=True):
        assert s.endswith("Z")
        assert ("." in s) == (t % 1000 != 0)
        assert round(datetime.fromisoformat(s).timestamp() * 1000) == t
    assert format_ts(np.array(ts), EPOCH_MS) == ts


def test_fix_body_fields_and_extras() -> None:
    dev = DeviceSpec("gps-7", "gps", ts_style=EPOCH_MS, echo_id=True, firmware="3.1.7")
    cols = {
        "lat": np.array([-16.9234567891]),
        "lon": np.array([145.7712345678]),
        "speed_kmh": np.array([62.5432]),
        "heading_deg": np.array([270.04]),
        "hdop": np.array([0.9]),
        "sats": np.array([11]),
    }
    (body,) = fix_bodies(dev, np.array([1_795_334_405_000]), cols, np.array([88]), np.array([1042]))
    assert list(body) == [
        "ts", "lat", "lon", "speed_kmh", "heading_deg", "hdop", "sats", "battery_pct", "seq",
        "device_id", "fw",
    ]  # fmt: skip
    assert body["ts"] == 1_795_334_405_000 and body["lat"] == -16.923457 and body["seq"] == 1042
    assert body["speed_kmh"] == 62.5 and body["device_id"] == "gps-7"
    assert type(body["sats"]) is int and type(body["battery_pct"]) is int


def test_lock_body_leaves_out_unknowns() -> None:
    dev = DeviceSpec("lock-7", "lock")
    b = lock_body(dev, 1_795_334_405_123, "unlocked", None, None, None, 40, 9)
    assert b == {"ts": "2026-11-22T08:00:05.123Z", "event": "unlocked", "battery_pct": 40, "seq": 9}
    b = lock_body(dev, 1_795_334_405_000, "unlocked", "rfid", -16.9, 145.7, 40, 9)
    assert b["method"] == "rfid" and b["lat"] == -16.9 and b["ts"] == "2026-11-22T08:00:05Z"
    assert dev.topics == ("lock",)
    assert DeviceSpec("u", "combined").topics == ("position", "lock")


def test_encode_is_compact_and_exact_size() -> None:
    raw = encode({"a": 1, "b": [1.5, "x"]})
    assert raw == b'{"a":1,"b":[1.5,"x"]}' and orjson.loads(raw) == {"a": 1, "b": [1.5, "x"]}
    assert len(raw) == 21
