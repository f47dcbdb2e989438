"""Bus mode with one worker, against a real nats-server (MQTT listener, JetStream) and a
private TimescaleDB: devices publish over MQTT 3.1.1 at QoS 1; every fix is stored once; a
trip's GPS unit and lock, in different device partitions, are evaluated together."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from cargowatch.busmode.runtime import BusRuntime
from cargowatch.settings import Settings
from cargowatch.worker import connect
from telemetry.bus.partitions import partition_of
from tests.bus_support import (
    PASSWORD,
    Device,
    WorkerThread,
    fix,
    fleet,
    lock_event,
    trip_doc,
    wait_for,
)
from tests.nats_service import NatsServer
from tests.services import free_port

P = 4
FIXES = 30


def route_fixes(now: int) -> list[tuple[int, bytes]]:
    """FIXES fixes along the route's first leg at ~77 km/h, 10 s apart, ending 30 s ago."""
    out = []
    for i in range(FIXES):
        ts = now - 330_000 + i * 10_000
        out.append((ts, fix(ts, 121.10 + 0.002 * i, 31.45 - 0.001 * i, i)))
    return out


def test_one_worker_stores_every_fix_once_and_keeps_each_trip_together(
    tmp_path: Path, pg_url: str
) -> None:
    trucks = fleet(4, P)
    ghost = "ghost.7"
    users = {d: PASSWORD for t in trucks for d in (t.gps, t.lock)} | {ghost: PASSWORD}
    with NatsServer(tmp_path / "nats", partitions=P, devices=users) as srv:
        settings = Settings(
            db_url=pg_url, bus_url=srv.url, bus_devices_gib=1, bus_trips_gib=1, tick_s=0.5
        )
        api = BusRuntime.open(settings)
        store = api.store
        now = int(time.time() * 1000)
        for t in trucks:
            assert partition_of(t.gps, P) != partition_of(t.lock, P)
            api.register_device({"device_id": t.gps, "kind": "gps", "shipper": "pg"})
            api.register_device({"device_id": t.lock, "kind": "lock", "shipper": "pg"})
            api.create_trip(trip_doc(t.trip_id, "pg", [t.gps, t.lock], now))
        worker = WorkerThread(settings, store).start()
        devices: list[Device] = []
        try:
            wait_for(lambda: worker.worker.owned == (frozenset(range(P)),) * 2, 20, "ownership")
            for t in trucks:
                gps = Device(t.gps, srv.mqtt_port).connect()
                devices.append(gps)
                gps.publish("position", [p for _, p in route_fixes(now)])
            lock0 = Device(trucks[0].lock, srv.mqtt_port).connect()
            lock1 = Device(trucks[1].lock, srv.mqtt_port).connect()
            spy = Device(ghost, srv.mqtt_port).connect()
            devices += [lock0, lock1, spy]
            lock0.publish("lock", [lock_event(now - 20_000, "tamper", 100)])
            # the lock says nothing of where it is: the truck's GPS locates the unlock
            lock1.publish("lock", [lock_event(now - 20_000, "unlocked", 100, method="rfid")])
            spy.publish("position", [fix(now - 1000, 121.1, 31.45, 1)])

            expected = FIXES * len(trucks)
            wait_for(lambda: store.count_telemetry()["fixes"] >= expected, 30, "fixes stored")

            def alarms() -> Counter[tuple[str, str]]:
                return Counter((a["trip_id"], a["type"]) for a in store.list_alarms(limit=1000))

            wanted = {
                (trucks[0].trip_id, "LOCK_TAMPER"),
                (trucks[1].trip_id, "UNAUTHORIZED_UNLOCK"),
            }
            wait_for(lambda: wanted <= set(alarms()), 20, f"alarms {wanted}")
            wait_for(lambda: bool(store.dead_letters(limit=10)), 10, "the ghost's dead letter")
        finally:
            for d in devices:
                d.close()
            worker.stop()
        counts = store.count_telemetry()
        assert counts["fixes"] == expected
        assert counts["lock_events"] == 2
        for t in trucks:
            stored = store.fixes([t.gps], now - 3600_000, now + 60_000)
            assert sorted(f.seq for f in stored) == list(range(FIXES)), t.gps
        got = alarms()
        for key in wanted:
            assert got[key] == 1, got
        assert not any(
            typ in ("LOCK_TAMPER", "UNAUTHORIZED_UNLOCK") and (trip, typ) not in wanted
            for trip, typ in got
        ), got
        unlock = next(
            a for a in store.list_alarms(limit=1000) if a["type"] == "UNAUTHORIZED_UNLOCK"
        )
        # located by the GPS unit's last fix (the lock's own message has no position)
        assert unlock["details"]["position_source"] == "last_fix"
        assert abs(unlock["lat"] - (31.45 - 0.001 * (FIXES - 1))) < 1e-6
        dead = store.dead_letters(limit=10)
        assert [d["reason"] for d in dead] == ["unknown_device"], dead
        assert dead[0]["device_id"] == ghost
        api.close()


async def test_the_bus_url_may_list_several_servers(tmp_path: Path) -> None:
    """A cluster's nodes in one --bus (comma-separated): a process connects while the first
    listed is down."""
    with NatsServer(tmp_path / "nats", partitions=2) as srv:
        user = srv.url.split("//", 1)[1].split("@", 1)[0]
        down = f"nats://{user}@127.0.0.1:{free_port()}"
        nc = await connect(f"{down},{srv.url}", "cargowatch-test")
        try:
            assert nc.is_connected
            assert nc.connected_url is not None and nc.connected_url.port == srv.port
        finally:
            await nc.close()
