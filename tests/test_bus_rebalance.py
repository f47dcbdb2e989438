"""Rebalancing under load, with real ``cargowatch worker`` processes: start one worker, add a
second, ``kill -9`` the first while devices publish. Every published fix is stored exactly
once, every expected alarm raised exactly once, the dead worker's partitions are taken over
within 15 s, and no alarm or milestone is repeated after a partition moved."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

from cargowatch.busmode.runtime import BusRuntime
from cargowatch.settings import Settings
from tests.bus_support import (
    PASSWORD,
    Device,
    consumer_states,
    fix,
    fleet,
    lease_pids,
    lock_event,
    spawn,
    trip_doc,
    wait_for,
)
from tests.nats_service import NatsServer

P = 4
ROUNDS = 360  # one fix per GPS unit a round, 20 rounds a second: ~18 s of load
TRUCKS = 6
KEYS = {f"{g}.p.{n}" for g in ("dev", "trip") for n in range(P)}


def test_workers_join_and_die_under_load(tmp_path: Path, pg_url: str) -> None:
    trucks = fleet(TRUCKS, P)
    users = {d: PASSWORD for t in trucks for d in (t.gps, t.lock)}
    with NatsServer(tmp_path / "nats", partitions=P, devices=users) as srv:
        env = {
            "CARGOWATCH_BUS": srv.url,
            "CARGOWATCH_DB": pg_url,
            "CARGOWATCH_BUS_DEVICES_GIB": "1",
            "CARGOWATCH_BUS_TRIPS_GIB": "1",
            "CARGOWATCH_TICK_S": "0.5",
        }
        api = BusRuntime.open(Settings(db_url=pg_url, bus_url=srv.url))
        store = api.store
        now = int(time.time() * 1000)
        base = now - 600_000
        for t in trucks:
            api.register_device({"device_id": t.gps, "kind": "gps", "shipper": "pg"})
            api.register_device({"device_id": t.lock, "kind": "lock", "shipper": "pg"})
            api.create_trip(trip_doc(t.trip_id, "pg", [t.gps, t.lock], now))
        a = spawn(["worker"], tmp_path / "a.log", **env)
        b = None
        devices: list[Device] = []
        try:
            wait_for(
                lambda: (
                    set(lease_pids(srv.url).values()) == {a.pid}
                    and set(lease_pids(srv.url)) == KEYS
                ),
                30,
                "worker a owns everything",
            )
            gps = [Device(t.gps, srv.mqtt_port).connect() for t in trucks]
            locks = [Device(t.lock, srv.mqtt_port).connect() for t in trucks]
            devices = gps + locks
            tamper_round = {50 + 50 * i: i for i in range(TRUCKS)}
            done = threading.Event()

            def publish() -> None:
                t0 = time.monotonic()
                for r in range(ROUNDS):
                    ts = base + r * 1000
                    for d in gps:
                        d.publish("position", [fix(ts, 121.10 + 1e-4 * r, 31.45 - 5e-5 * r, r)])
                    if r in tamper_round:
                        locks[tamper_round[r]].publish("lock", [lock_event(ts, "tamper", r)])
                    time.sleep(max(0.0, t0 + (r + 1) / 20 - time.monotonic()))
                done.set()

            publisher = threading.Thread(target=publish, daemon=True)
            publisher.start()
            time.sleep(2)
            b = spawn(["worker"], tmp_path / "b.log", **env)
            wait_for(
                lambda: Counter(lease_pids(srv.url).values())[b.pid] == 4, 30, "b takes its share"
            )
            assert a.poll() is None and b.poll() is None
            a.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            a.wait(10)
            took = wait_for(
                lambda: lease_pids(srv.url) == dict.fromkeys(KEYS, b.pid), 20, "takeover"
            )
            assert took <= 15.0, f"takeover took {took:.1f} s"
            assert time.monotonic() - killed <= 16.0
            publisher.join(60)
            assert done.is_set()
            expected = ROUNDS * TRUCKS
            # what the dead worker held unacknowledged comes back after AckWait (30 s)
            try:
                wait_for(lambda: store.count_telemetry()["fixes"] >= expected, 75, "every fix")
            except AssertionError:
                raise AssertionError(
                    (store.count_telemetry(), expected, consumer_states(srv.url))
                ) from None
            wait_for(
                lambda: (
                    sum(a["type"] == "LOCK_TAMPER" for a in store.list_alarms(limit=1000)) >= TRUCKS
                ),
                30,
                "every tamper alarm",
            )
            time.sleep(2)  # anything raised twice would be raised by now
        finally:
            for d in devices:
                d.close()
            for proc in (a, b):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(20)
        assert b is not None and b.returncode == 0, (tmp_path / "b.log").read_text()[-3000:]
        counts = store.count_telemetry()
        assert counts["fixes"] == ROUNDS * TRUCKS and counts["lock_events"] == TRUCKS
        for t in trucks:
            seqs = [f.seq for f in store.fixes([t.gps], base - 1, base + ROUNDS * 1000)]
            assert sorted(seqs) == list(range(ROUNDS)), t.gps
        alarms = store.list_alarms(limit=1000)
        per_episode = Counter((a["trip_id"], a["type"], a.get("episode")) for a in alarms)
        assert max(per_episode.values()) == 1, per_episode
        tampers = Counter(a["trip_id"] for a in alarms if a["type"] == "LOCK_TAMPER")
        assert tampers == {t.trip_id: 1 for t in trucks}, tampers
        for t in trucks:
            kinds = Counter(
                f"{e.get('kind')}:{e.get('stop_id') or e.get('status') or ''}"
                for e in store.trip_events(t.trip_id)
            )
            assert not kinds or max(kinds.values()) == 1, (t.trip_id, kinds)
        api.close()
