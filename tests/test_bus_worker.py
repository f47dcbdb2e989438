"""Bus mode with one worker, against a real nats-server (MQTT listener, JetStream) and a
private TimescaleDB: devices publish over MQTT 3.1.1 at QoS 1; every fix is stored once; a
trip's GPS unit and lock, in different device partitions, are evaluated together."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

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


def bus_settings(srv: NatsServer, pg_url: str) -> Settings:
    """A worker's and its serve's settings: small streams, ticks every half second."""
    return Settings(db_url=pg_url, bus_url=srv.url, bus_devices_gib=1, bus_trips_gib=1, tick_s=0.5)


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
        settings = bus_settings(srv, pg_url)
        api = BusRuntime.open(settings)
        store, now = api.store, int(time.time() * 1000)
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


async def test_stage_1_holds_a_batch_ahead_of_another_partition(tmp_path: Path) -> None:
    """The skew bound in a worker: a device partition's batch more than ``bus_skew_hold_s``
    ahead of another partition's oldest waiting message waits until that one catches up, and
    a lag reading that stops coming holds nothing back (no NATS needed: the readings are set
    as the tick loop would set them)."""
    import asyncio

    from alerts import LiveHub
    from cargowatch.busmode.lag import PartitionLag
    from cargowatch.worker import LAG_FRESH_S, BusWorker
    from core.clock import SystemClock
    from telemetry.bus.consumer import BusMessage
    from telemetry.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 's.sqlite'}")
    settings = Settings(bus_url="nats://127.0.0.1:1", bus_skew_hold_s=20.0)
    worker = BusWorker(settings, store=store, clock=SystemClock(), hub=LiveHub())
    behind_ms = 1_795_334_400_000
    ahead = [BusMessage("part.0.devices.g.position", "g", "position", b"{}", 1, 0, 1)]
    ahead[0].timestamp_ns = (behind_ms + 30_000) * 1_000_000

    def read(lag_of_1: PartitionLag) -> None:
        worker._device_lags = {0: PartitionLag(0, 1, behind_ms + 30_000), 1: lag_of_1}
        worker._horizon_read = time.monotonic()

    async def held_for(refresh: bool, caught_up_after_s: float | None) -> float:
        read(PartitionLag(5, 0, behind_ms))
        t0 = time.monotonic()
        task = asyncio.create_task(worker._hold_while_ahead(0, ahead))
        while not task.done():
            await asyncio.sleep(0.05)
            if caught_up_after_s is not None and time.monotonic() - t0 >= caught_up_after_s:
                read(PartitionLag(0, 0, None))
            elif refresh:
                read(PartitionLag(5, 0, behind_ms))
        return time.monotonic() - t0

    # held while partition 1 is behind, released at its next reading once it caught up
    waited = await held_for(refresh=True, caught_up_after_s=1.5)
    assert 1.5 <= waited < 3.0, waited
    # 20 s ahead is the bound: 10 s ahead passes at once
    ahead[0].timestamp_ns = (behind_ms + 10_000) * 1_000_000
    assert await held_for(refresh=True, caught_up_after_s=None) < 0.1
    # readings that stop coming (the tick loop is gone) release it after LAG_FRESH_S
    ahead[0].timestamp_ns = (behind_ms + 30_000) * 1_000_000
    waited = await held_for(refresh=False, caught_up_after_s=None)
    assert LAG_FRESH_S <= waited < LAG_FRESH_S + 1.5, waited


@pytest.mark.parametrize("wait_s", [120, 0])
def test_a_late_unlock_waits_for_the_gps_backlog_from_another_partition(
    tmp_path: Path, pg_url: str, wait_s: int
) -> None:
    """A truck is unsealed at its consignee during a gap in coverage. Its lock's backlog is
    re-keyed and evaluated first; the GPS unit's backlog, from another device partition,
    only after it. The unlock waits for it and is located at the consignee, which completes
    the trip; with ``unlock_gps_wait_s`` 0 it is judged at once, located by the fix from
    before the gap (1.5 km short, 150 s earlier) and raises a false UNAUTHORIZED_UNLOCK."""
    (truck,) = fleet(1, P, prefix=f"w{wait_s}")
    users = {truck.gps: PASSWORD, truck.lock: PASSWORD}
    stop = (121.47, 31.23)
    leg = (121.30, 31.35)

    def along(f: float) -> tuple[float, float]:
        return leg[0] + f * (stop[0] - leg[0]), leg[1] + f * (stop[1] - leg[1])

    with NatsServer(tmp_path / "nats", partitions=P, devices=users) as srv:
        settings = bus_settings(srv, pg_url)
        api = BusRuntime.open(settings)
        store, now = api.store, int(time.time() * 1000)
        api.register_device({"device_id": truck.gps, "kind": "gps", "shipper": "pg"})
        api.register_device({"device_id": truck.lock, "kind": "lock", "shipper": "pg"})
        doc = trip_doc(truck.trip_id, "pg", [truck.gps, truck.lock], now)
        doc["rules"] = {**doc["rules"], "unlock_gps_wait_s": wait_s}
        api.create_trip(doc)
        worker = WorkerThread(settings, store).start()
        devices: list[Device] = []
        unlock_at = now - 250_000
        try:
            wait_for(lambda: worker.worker.owned == (frozenset(range(P)),) * 2, 20, "ownership")
            gps = Device(truck.gps, srv.mqtt_port).connect()
            lock = Device(truck.lock, srv.mqtt_port).connect()
            devices += [gps, lock]
            # before the gap: up to 1.5 km short of the consignee, 150 s before the unlock
            before = [(now - 600_000 + 40_000 * i, along(0.7 + 0.045 * i)) for i in range(6)]
            gps.publish("position", [fix(ts, *p, i) for i, (ts, p) in enumerate(before)])
            wait_for(lambda: store.count_telemetry()["fixes"] >= 6, 30, "fixes before the gap")
            lock.publish("lock", [lock_event(unlock_at, "unlocked", 7, method="rfid")])
            wait_for(lambda: store.count_telemetry()["lock_events"] >= 1, 30, "the unlock stored")
            time.sleep(1.0)  # stage 2 evaluated it in the transaction that stored it
            types = {a["type"] for a in store.list_alarms(limit=100)}
            assert ("UNAUTHORIZED_UNLOCK" in types) is (wait_s == 0), types
            # the GPS backlog: the last 1.5 km, then parked at the consignee
            gap = [(now - 370_000, along(0.97)), (now - 340_000, stop)]
            gap += [(now - 310_000 + 30_000 * i, stop) for i in range(8)]
            gps.publish("position", [fix(ts, *p, 10 + i) for i, (ts, p) in enumerate(gap)])
            wait_for(lambda: store.count_telemetry()["fixes"] >= 16, 30, "the GPS backlog")
            if wait_s:
                wait_for(
                    lambda: (store.get_trip(truck.trip_id) or {}).get("status") == "completed",
                    30,
                    "the trip completed by the unlock at its last stop",
                )
        finally:
            for d in devices:
                d.close()
            worker.stop()
        alarms = [a["type"] for a in store.list_alarms(limit=100)]
        assert alarms.count("UNAUTHORIZED_UNLOCK") == (1 if wait_s == 0 else 0), alarms
        if wait_s == 0:
            (false,) = [a for a in store.list_alarms(limit=100) if a["type"] != "SIGNAL_LOST"]
            assert false["details"]["position_source"] == "last_fix"
        api.close()
