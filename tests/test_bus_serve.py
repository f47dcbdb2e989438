"""Two ``cargowatch serve --bus … --workers 1`` processes on one NATS server and one database:
each webhook event is delivered once, each escalation happens once, the live feed of either
shows the alarms raised by any worker, and a revoked API key is refused by both within 1 s."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import nats

from cargowatch.busmode.runtime import BusRuntime
from cargowatch.services.keys import hash_key
from cargowatch.settings import Settings
from telemetry.bus.partitions import trip_partition
from tests.bus_support import (
    PASSWORD,
    Device,
    LiveReader,
    WebhookReceiver,
    fix,
    fleet,
    lease_pids,
    lock_event,
    spawn,
    trip_doc,
    wait_for,
)
from tests.nats_service import NatsServer
from tests.services import free_port

P = 4
ADMIN = "cw_admin_key_for_bus_serve_tests_0001"


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_serve_processes_share_alarms_webhooks_and_the_live_feed(
    tmp_path: Path, pg_url: str
) -> None:
    # one truck per trip partition: whichever worker owns it, both serves must see its alarm
    candidates = fleet(16, P)
    by_part = {trip_partition(t.trip_id, P): t for t in reversed(candidates)}
    trucks = [by_part[n] for n in sorted(by_part)]
    assert len(trucks) == P
    users = {d: PASSWORD for t in trucks for d in (t.gps, t.lock)}
    receiver = WebhookReceiver()
    with NatsServer(tmp_path / "nats", partitions=P, devices=users) as srv:
        api = BusRuntime.open(Settings(db_url=pg_url, bus_url=srv.url))
        store = api.store
        now = int(time.time() * 1000)
        for t in trucks:
            api.register_device({"device_id": t.gps, "kind": "gps", "shipper": "pg"})
            api.register_device({"device_id": t.lock, "kind": "lock", "shipper": "pg"})
            doc = trip_doc(t.trip_id, "pg", [t.gps, t.lock], now)
            doc["sla"] = {"critical": {"ack_min": 0.05}}  # escalated 3 s after it is raised
            api.create_trip(doc)
        store.put_webhook(
            {
                "webhook_id": "wh1",
                "shipper": "pg",
                "url": receiver.url,
                "secret": "s" * 20,
                "events": ["alarm.raised", "alarm.escalated", "trip.milestone"],
            }
        )
        env = {
            "CARGOWATCH_BUS": srv.url,
            "CARGOWATCH_DB": pg_url,
            "CARGOWATCH_ADMIN_KEY": ADMIN,
            "CARGOWATCH_WORKERS": "1",
            "CARGOWATCH_BUS_DEVICES_GIB": "1",
            "CARGOWATCH_BUS_TRIPS_GIB": "1",
            "CARGOWATCH_ALLOW_PRIVATE_TARGETS": "true",
            "CARGOWATCH_TICK_S": "0.5",
        }
        urls = []
        procs = []
        readers: list[LiveReader] = []
        devices: list[Device] = []
        try:
            for name in ("a", "b"):
                port = free_port()
                urls.append(f"http://127.0.0.1:{port}")
                procs.append(
                    spawn(
                        ["serve", "--http", f"127.0.0.1:{port}"],
                        tmp_path / f"{name}.log",
                        **env,
                    )
                )
            for url in urls:
                wait_for(lambda url=url: healthy(url), 60, f"{url} healthy")
            pids = {p.pid for p in procs}
            wait_for(
                lambda: Counter(lease_pids(srv.url).values()) == dict.fromkeys(pids, P),
                40,
                "both serves' workers own half of each partition set",
            )
            owners = lease_pids(srv.url)
            assert {owners[f"trip.p.{n}"] for n in range(P)} == pids  # alarms from both
            readers = [LiveReader(url, ADMIN) for url in urls]
            for r in readers:
                assert r.connected.wait(10)
            for t in trucks:
                gps = Device(t.gps, srv.mqtt_port).connect()
                lock = Device(t.lock, srv.mqtt_port).connect()
                devices += [gps, lock]
                gps.publish(
                    "position",
                    [
                        fix(now - 120_000 + i * 10_000, 121.10 + 0.002 * i, 31.45 - 0.001 * i, i)
                        for i in range(10)
                    ],
                )
                lock.publish("lock", [lock_event(now - 5_000, "tamper", 1)])

            def tampers() -> dict[str, dict]:
                return {
                    a["alarm_id"]: a
                    for a in store.list_alarms(limit=1000)
                    if a["type"] == "LOCK_TAMPER"
                }

            wait_for(lambda: len(tampers()) == P, 30, "a tamper alarm per trip")
            ids = set(tampers())
            for r in readers:  # the live feed of either shows every worker's alarms
                wait_for(lambda r=r: ids <= r.alarms_raised(), 10, "alarms on the live feed")

            def sent(kind: str) -> Counter[str]:
                return Counter(
                    b["data"].get("alarm_id", "") for b in receiver.bodies if b["type"] == kind
                )

            wait_for(lambda: set(sent("alarm.escalated")) >= ids, 30, "escalations delivered")
            wait_for(lambda: set(sent("alarm.raised")) >= ids, 30, "raised delivered")
            time.sleep(3)  # a second delivery or escalation would show by now

            # a revoked key is refused by every process within 1 s
            made = httpx.post(
                f"{urls[0]}/v1/keys",
                json={"role": "desk", "label": "temp"},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            assert made.status_code == 201, made.text
            key = made.json()["key"]
            for url in urls:
                ok = httpx.get(f"{url}/v1/alarms", headers={"Authorization": f"Bearer {key}"})
                assert ok.status_code == 200
            doc = store.get_api_key(hash_key(key))
            assert doc is not None
            store.put_api_key({**doc, "revoked": True})
            revoked = time.monotonic()
            for url in urls:
                refused = httpx.get(f"{url}/v1/alarms", headers={"Authorization": f"Bearer {key}"})
                assert refused.status_code == 401
            assert time.monotonic() - revoked < 1.0
        finally:
            for r in readers:
                r.close()
            for d in devices:
                d.close()
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait(30)
            receiver.close()
        per_event = Counter(b["id"] for b in receiver.bodies)
        assert max(per_event.values()) == 1, [e for e, n in per_event.items() if n > 1]
        escalated = Counter(
            b["data"].get("alarm_id") for b in receiver.bodies if b["type"] == "alarm.escalated"
        )
        assert escalated == dict.fromkeys(ids, 1), escalated
        for alarm in tampers().values():
            assert alarm["escalation_level"] == 1 and alarm["ack_escalated"]
            history = [
                h for h in store.alarm_history(alarm["alarm_id"]) if h.get("action") == "escalated"
            ]
            assert len(history) == 1, history
        for r in readers:
            raised = Counter(d["alarm_id"] for k, d in r.events if k == "alarm.raised")
            assert all(raised[i] == 1 for i in ids), raised
        assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
        api.close()


async def test_serve_without_workers_creates_the_streams(tmp_path: Path, pg_url: str) -> None:
    """``serve --bus --workers 0`` started first: the devices' messages have their streams."""
    with NatsServer(tmp_path / "nats", partitions=2) as srv:
        settings = Settings(db_url=pg_url, bus_url=srv.url, bus_devices_gib=1, bus_trips_gib=1)
        api = BusRuntime.open(settings)
        try:
            async with api.running():
                nc = await nats.connect(srv.url)
                try:
                    infos = await nc.jetstream().streams_info()
                finally:
                    await nc.close()
        finally:
            api.close()
    names = sorted(str(i.config.name) for i in infos if not str(i.config.name).startswith("KV_"))
    assert names == ["DEVICES_0", "DEVICES_1", "TRIPS_0", "TRIPS_1"]
