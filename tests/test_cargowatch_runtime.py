"""The runtime's wiring (cargowatch/runtime.py): with ``CARGOWATCH_SMTP`` set, an alarm raised
through the real pipeline reaches a shipper's ``notify`` address through a real SMTP server."""

from __future__ import annotations

import asyncio
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
