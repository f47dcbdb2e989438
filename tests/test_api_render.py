"""JSON views of stored documents (dead letters, deliveries, webhooks, trips)."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from api.render import render_dead_letter, render_delivery, render_trip, render_webhook


def letter(payload: bytes | memoryview) -> dict:
    return {
        "id": 7,
        "topic": "devices/d1/position",
        "device_id": "d1",
        "received_at": 1_795_334_405_000,
        "reason": "bad_json",
        "detail": "x",
        "payload": payload,
    }


def test_text_payload_stays_text() -> None:
    view = render_dead_letter(letter('{"lat": 31.2, "名": 1'.encode()))
    assert view["payload"] == '{"lat": 31.2, "名": 1'
    assert view["payload_encoding"] == "utf-8"
    assert view["received_at"] == "2026-11-22T08:00:05.000Z"


def test_binary_payload_is_base64() -> None:
    view = render_dead_letter(letter(memoryview(b"\x00\xff\xfe")))
    assert view["payload_encoding"] == "base64"
    assert base64.b64decode(view["payload"]) == b"\x00\xff\xfe"
    assert view["payload_bytes"] == 3


@given(st.binary(max_size=200))
def test_payload_always_recoverable(raw: bytes) -> None:
    view = render_dead_letter(letter(raw))
    if view["payload_encoding"] == "utf-8":
        assert view["payload"].encode() == raw
    else:
        assert base64.b64decode(view["payload"]) == raw


@given(st.text(max_size=64))
def test_webhook_view_never_reveals_the_secret(secret: str) -> None:
    view = render_webhook(
        {
            "webhook_id": "wh_1",
            "shipper": "pg",
            "url": "https://x.test",
            "secret": secret,
            "events": ["alarm.raised"],
            "created_at": 0,
        }
    )
    assert "secret" not in view
    hint = view["secret_hint"]
    if len(secret) < 16:
        assert hint in ("", "…")  # too short to show any of it
    else:
        assert hint == "…" + secret[-4:]


def test_delivery_view_names_the_event_type_from_the_body() -> None:
    view = render_delivery(
        {
            "delivery_id": "d",
            "webhook_id": "w",
            "event_id": "e",
            "shipper": "pg",
            "status": "dead",
            "attempts": 9,
            "body": '{"type": "alarm.escalated"}',
            "created_at": 0,
            "next_attempt_at": None,
            "last_error": "HTTP 500",
        }
    )
    assert view["event_type"] == "alarm.escalated"
    assert view["created_at"] == "1970-01-01T00:00:00.000Z"
    assert view["next_attempt_at"] is None
    assert "body" not in view


def test_trip_times_become_rfc3339_and_strings_stay() -> None:
    view = render_trip(
        {
            "trip_id": "t",
            "shipper": "pg",
            "status": "active",
            "devices": [],
            "planned_start": "2026-11-22T08:00:00+08:00",
            "activated_at": 1_795_334_405_000,
            "stops": [{"stop_id": "S1", "eta": 1_795_334_405_000}],
        },
        {"state": "on_route", "last_fix_ts": 1_795_334_405_000, "ts_ms": 0},
    )
    assert view["planned_start"] == "2026-11-22T08:00:00+08:00"
    assert view["activated_at"] == "2026-11-22T08:00:05.000Z"
    assert view["stops"][0]["eta"] == "2026-11-22T08:00:05.000Z"
    assert view["live"]["last_fix_ts"] == "2026-11-22T08:00:05.000Z"
    assert view["live"]["ts"] == "1970-01-01T00:00:00.000Z"
