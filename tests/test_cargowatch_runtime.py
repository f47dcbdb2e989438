"""The runtime's wiring (cargowatch/runtime.py): with ``CARGOWATCH_SMTP`` set, an alarm raised
through the real pipeline reaches a shipper's ``notify`` address through a real SMTP server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson

from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from core.clock import ManualClock
from telemetry.ingest import RawMessage
from tests.alerts_support import T0
from tests.test_alerts_email import Inbox, Relay, free_port
from tests.test_cargowatch_metrics import position, trip_doc


def make(tmp_path: Path, smtp: str | None) -> Runtime:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'runtime.sqlite'}",
        mqtt_url=None,
        allow_private_targets=True,  # the relay listens on 127.0.0.1
        smtp=smtp,
        public_url="https://desk.example.com/",
    )
    return Runtime.open(settings, clock=ManualClock(T0))


def test_an_alarm_is_mailed_to_the_shippers_notify_address(tmp_path: Path) -> None:
    inbox = Inbox()
    relay = Relay(free_port(), inbox).start()
    runtime = make(tmp_path, relay.url)
    try:
        runtime.put_shipper(
            {"shipper": "pg", "notify": [{"email": "ops@pg.example", "severities": ["critical"]}]}
        )
        runtime.register_device({"device_id": "gps-1", "kind": "gps", "shipper": "pg"})
        runtime.register_device({"device_id": "lock-1", "kind": "lock", "shipper": "pg"})
        runtime.create_trip(trip_doc("T1", "pg", ["gps-1", "lock-1"]))
        runtime.pipeline.process([position(T0)])
        tamper = {"ts": T0 + 10, "event": "tamper", "lat": 31.45, "lon": 121.10}
        runtime.pipeline.process([RawMessage("devices/lock-1/lock", orjson.dumps(tamper), T0)])
        (alarm,) = runtime.store.list_alarms(type="LOCK_TAMPER")
        assert asyncio.run(runtime.webhooks.deliver_due()) >= 1
        (mail_from, to, msg) = inbox.messages[0]
        assert mail_from == "cargowatch@localhost"
        assert to == ["ops@pg.example"] and len(inbox.messages) == 1
        body = msg.get_content()
        assert "LOCK_TAMPER" in body and "T1" in body
        assert f"https://desk.example.com/#alarm={alarm['alarm_id']}" in body
        history = runtime.store.alarm_history(alarm["alarm_id"])
        assert any(h.get("by") == "email" and h.get("action") == "notified" for h in history)
    finally:
        runtime.close()
        relay.stop()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_after_a_restart_a_backlog_of_the_previous_trip_stays_off_the_next(
    tmp_path: Path,
) -> None:
    """The unit rode on acme's trip A, which ended; pg's trip B now has it. After a restart,
    A's backlog still raises nothing on B (A's span is read back from the store), and is
    stored all the same."""
    clock = ManualClock(T0)
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'r.sqlite'}", mqtt_url=None)
    runtime = Runtime.open(settings, clock=clock)
    runtime.register_device({"device_id": "gps-1", "kind": "gps", "shipper": "acme"})
    runtime.create_trip(trip_doc("A", "acme", ["gps-1"], planned_start=_iso(T0)))
    runtime.pipeline.process([position(T0)])
    clock.advance(1800)
    runtime.end_trip("A", "completed", "desk-07")
    runtime.create_trip(trip_doc("B", "pg", ["gps-1"], planned_start=_iso(T0 + 3_600_000)))
    clock.advance(1800)
    runtime.pipeline.tick()
    assert runtime.engine.trip_state("B")["status"] == "active"
    runtime.close()

    runtime = Runtime.open(settings, clock=clock)  # a restart
    try:
        clock.advance(60)
        # 20 minutes of A's time, 50 km from B's route
        backlog = [
            RawMessage(
                "devices/gps-1/position",
                orjson.dumps({"ts": T0 + 60_000 * k, "lat": 31.9, "lon": 120.6}),
                clock.now_ms(),
            )
            for k in range(1, 21)
        ]
        runtime.pipeline.process(backlog)
        # (the plan's eta lies before B's start: its LATE_ARRIVAL is right, and not at issue)
        assert runtime.store.list_alarms(trip_id="B", type="ROUTE_DEVIATION") == []
        assert runtime.engine.trip_state("B")["last_fix"] is None  # not B's positions
        assert len(runtime.store.fixes(["gps-1"], T0)) == 21  # stored all the same
    finally:
        runtime.close()
