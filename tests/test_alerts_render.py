from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import ValidationError, iso, parse_time, render_alarm
from alerts.deadlines import merge_sla
from alerts.lifecycle import new_alarm, raised_entry
from tests.alerts_support import T0, signal

ALARM_FIELDS = {
    "alarm_id", "type", "severity", "trip_id", "device_id", "shipper", "ts", "raised_at",
    "lat", "lon", "details", "status", "ack_due", "resolve_due", "escalation_level", "history",
    "acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by", "resolution",
}  # fmt: skip

MS = st.integers(min_value=0, max_value=253_402_300_799_999)  # up to year 9999


def test_iso_format() -> None:
    assert iso(1_795_334_405_007) == "2026-11-22T08:00:05.007Z"
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(None) is None


@given(MS)
def test_iso_matches_datetime_and_round_trips(ms: int) -> None:
    expected = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    text = iso(ms)
    assert text is not None
    assert text.startswith(expected)
    assert parse_time(text) == ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-11-22T08:00:05Z", 1_795_334_405_000),
        ("2026-11-22T16:00:05+08:00", 1_795_334_405_000),
        ("2026-11-22T08:00:05.250Z", 1_795_334_405_250),
        ("2026-11-22 08:00:05z", 1_795_334_405_000),
        ("1795334405000", 1_795_334_405_000),
        (1_795_334_405_000, 1_795_334_405_000),
    ],
)
def test_parse_time_accepts(text: str | int, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize("bad", ["2026-11-22T08:00:05", "2026-11-22", "yesterday", "", True, 1.5])
def test_parse_time_refuses(bad: object) -> None:
    with pytest.raises(ValidationError):
        parse_time(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # usable in pydantic validators
        parse_time(bad)  # type: ignore[arg-type]


def test_render_alarm_has_every_contract_field_and_iso_times() -> None:
    sig = signal(details={"distance_m": 812.5})
    doc = new_alarm(sig, raised_at=T0, deadline=merge_sla()["critical"], details=sig.details)
    doc["details"]["episode_ended_at"] = T0 + 1000
    view = render_alarm(doc, [raised_entry(doc)])
    assert set(view) >= ALARM_FIELDS
    assert view["raised_at"] == iso(T0)
    assert view["ts"] == iso(T0 - 5000)
    assert view["ack_due"] == iso(T0 + 10 * 60_000)
    assert view["resolve_due"] == iso(T0 + 4 * 3600_000)
    assert view["acknowledged_at"] is None and view["resolution"] is None
    assert view["details"] == {"distance_m": 812.5, "episode_ended_at": iso(T0 + 1000)}
    assert view["history"] == [
        {"at": iso(T0), "by": "engine", "key_id": None, "action": "raised", "from": None,
         "to": "open", "note": None}
    ]  # fmt: skip
    # the stored document is not modified by rendering
    assert doc["details"]["episode_ended_at"] == T0 + 1000
    assert render_alarm(doc)["history"] == []
