"""End to end in NATS mode (contract §8, partitioned engine): the fleet test of
``test_e2e_fleet`` on ``cargowatch serve --bus … --workers 2`` against a private nats-server
and a fresh TimescaleDB database.

Every simulated device connects to the NATS server's MQTT listener with its own credentials
(a device user may publish only its own topics), so a trip's GPS unit and e-lock reach the
engine through different device partitions and must be re-keyed onto one trip partition to be
judged together. The fleet is a representative subset of the incidents (GPS-only, lock-only,
the ones that combine both devices, a signal loss with a backlog, duplicates, bad input) plus
a few normal trucks, on a faster clock than the Mosquitto run.

Checks: exactly the expected alarms per trip (each raised once), nothing from normal trips,
signed webhooks of each shipper's own trips (one raise per alarm), the dead letters of the
malformed scenario (the ones a device can publish: its server refuses a topic that is not its
own), each within the detection deadline, /healthz without a backlog once drained, and a
clean SIGTERM exit.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.clock import ScaledClock
from simulators import SimTrip, build_fleet, register
from simulators.fleet import iter_fleet_messages
from simulators.verify import Verdict, detection_lag_ms, match_alarms, trigger_times
from tests.alerts_support import Receiver
from tests.nats_service import NatsServer
from tests.services import PostgresServer, free_port
from tests.test_e2e_fleet import ADMIN_KEY, SANITY_BOUND_S, SECRETS, START, _all_alarms

# Simulated seconds per real second. The signal-loss-with-backlog scenario leaves its alarm a
# window of 3 simulated minutes (silence past the 10 min threshold, before the backlog lands):
# 0.6 s of real time at 300, which a loaded CI machine missed once; 0.9 s at 200.
SPEED = float(os.environ.get("CW_E2E_NATS_SPEED", "200"))
LEAD_S = 15.0  # real seconds for the server and its workers to start, and the fleet to register
PARTITIONS = 4
INCIDENTS = [
    "route_deviation",  # GPS only
    "long_stop",
    "speeding",
    "risk_zone_entry",
    "tamper",  # lock only
    "rope_cut",
    "low_battery",
    "unlock_en_route",  # an unlock located by the truck's GPS: both devices of a trip
    "unlock_no_position",
    "wrong_consignee",
    "signal_loss_backlog",  # wall-clock rule, then a backlog
    # Its GPS unit and lock flush their gap's backlogs at once, through different device
    # partitions in either order: the unlock at the stop waits for the GPS's backlog.
    "late_arrival_withdrawn",
    "duplicates_out_of_order",
    "malformed",
]
N_NORMAL = 6
PASSWORD = "e2e-device-secret"
# Refused by the NATS server itself (a device user publishes only on its own subject), so
# never a dead letter here: a topic too bad to name a device.
SERVER_REFUSED = {"bad_topic"}


@dataclass
class NatsRun:
    trips: list[SimTrip]
    alarms: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    receivers: dict[str, Receiver] = field(default_factory=dict)
    published: int = 0
    unconfirmed: int = 0
    lags_ms: dict[str, int | None] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    metrics: str = ""
    exit_code: int | None = None
    log: str = ""
    started_late_s: float = 0.0
    diagnostics: dict[str, str] = field(default_factory=dict)


def _device_ids(trips: list[SimTrip]) -> set[str]:
    """Every device id the fleet publishes from that may hold broker credentials: its own
    devices and the malformed scenario's unregistered one (credentials, but no cargowatch
    device), not a topic too bad to be a device."""
    ids = {d["device_id"] for t in trips for d in t.devices}
    for t in trips:
        for m in t.iter_messages():
            if m.device_id not in ids and "*" not in m.device_id and "+" not in m.device_id:
                ids.add(m.device_id)
    return ids


def _publish(trips: list[SimTrip], port: int, clock: ScaledClock, stop: threading.Event) -> int:
    """Each device on its own MQTT 3.1.1 session with its own credentials; every message at
    its simulated time, QoS 1; returns how many were confirmed (PUBACK)."""
    allowed = _device_ids(trips)
    clients: dict[str, paho.Client] = {}
    for device_id in sorted(allowed):
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"e2e-{random.getrandbits(40):x}",
            protocol=paho.MQTTv311,
        )
        c.username_pw_set(device_id, PASSWORD)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients[device_id] = c
    try:
        infos = []
        for msg in iter_fleet_messages(trips):
            client = clients.get(msg.device_id)
            if client is None:
                continue  # a topic no device can publish on (SERVER_REFUSED)
            while (wait := (msg.at_ms - clock.now_ms()) / 1000 / SPEED) > 0:
                if stop.wait(min(wait, 0.5)):
                    return 0
            infos.append(client.publish(msg.topic(), msg.payload, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        return sum(1 for info in infos if info.is_published())
    finally:
        for c in clients.values():
            c.disconnect()
            c.loop_stop()


async def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"cargowatch serve --bus exited with {proc.returncode}")
            try:
                r = await http.get(url + "/healthz")
                workers = r.json().get("bus", {}).get("workers", [])
                if r.status_code == 200 and workers and all(w["trip_partitions"] for w in workers):
                    return  # both local workers own a share of the trip partitions
            except (httpx.TransportError, ValueError):
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("cargowatch serve --bus did not become healthy")


async def _run(db_url: str, workdir: Path) -> NatsRun:
    fleet = build_fleet(
        N_NORMAL + len(INCIDENTS),
        seed=11,
        start_ms=START + 60_000,
        incidents=INCIDENTS,
        shipper_cycle=tuple(SECRETS),
    )
    run = NatsRun(fleet)
    users = dict.fromkeys(_device_ids(fleet), PASSWORD)
    nats = NatsServer(workdir / "nats", partitions=PARTITIONS, devices=users).start()
    http_port = free_port()
    api_url = f"http://127.0.0.1:{http_port}"
    anchor_ms = time.time_ns() // 1_000_000 + int(LEAD_S * 1000)
    clock = ScaledClock(SPEED, start_ms=START, anchor_ms=anchor_ms)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CARGOWATCH_")},
        "CARGOWATCH_BUS": nats.url,
        "CARGOWATCH_WORKERS": "2",
        "CARGOWATCH_BUS_DEVICES_GIB": "1",
        "CARGOWATCH_BUS_TRIPS_GIB": "1",
        "CARGOWATCH_DB": db_url,
        "CARGOWATCH_HTTP": f"127.0.0.1:{http_port}",
        "CARGOWATCH_ADMIN_KEY": ADMIN_KEY,
        "CARGOWATCH_CLOCK_SPEED": str(SPEED),
        "CARGOWATCH_CLOCK_START_MS": str(START),
        "CARGOWATCH_CLOCK_ANCHOR_MS": str(anchor_ms),
        "CARGOWATCH_TICK_S": "5",  # simulated seconds: 17 ms real at x300
        "CARGOWATCH_ALLOW_PRIVATE_TARGETS": "1",  # the receivers are on 127.0.0.1
    }
    log_path = workdir / "serve.log"
    run.receivers = {s: await Receiver(secret).start() for s, secret in SECRETS.items()}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cargowatch", "--log-level", "warning", "serve"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    stop = threading.Event()
    try:
        try:
            await _wait_healthy(api_url, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from exc
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30) as api:
            for shipper, rec in run.receivers.items():
                body = {"url": rec.url, "secret": SECRETS[shipper], "shipper": shipper}
                (await api.post("/v1/webhooks", json=body)).raise_for_status()
            await register(fleet, api_url, ADMIN_KEY)
            run.started_late_s = max(0.0, (clock.now_ms() - START) / 1000 / SPEED)
            run.published = await asyncio.to_thread(_publish, fleet, nats.mqtt_port, clock, stop)
            run.unconfirmed = (
                sum(1 for t in fleet for m in t.iter_messages() if m.device_id in users)
                - run.published
            )
            expected = sum(len(t.expected) for t in fleet)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                run.alarms = await _all_alarms(api)
                if len(run.alarms) >= expected:
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(1200 / SPEED)  # 20 simulated minutes: room for SIGNAL_LOST
            run.alarms = await _all_alarms(api)
            for a in match_alarms(fleet, run.alarms).unexpected:
                doc = (await api.get(f"/v1/trips/{a['trip_id']}")).json()
                doc.pop("route", None)
                run.diagnostics[a["trip_id"]] = orjson.dumps(doc).decode()[:4000]
            r = await api.get("/v1/dead-letters", params={"limit": 10_000})
            r.raise_for_status()
            run.dead_letters = r.json()
            run.health = (await api.get("/healthz")).json()
            run.metrics = (await api.get("/metrics")).text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sum(len(rec.events) for rec in run.receivers.values()) >= len(run.alarms):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)  # where it hangs: every thread's stack
                await asyncio.sleep(1.0)
                proc.kill()
                proc.wait()
        run.exit_code = proc.returncode
        run.log = log_path.read_text(errors="replace")
        for rec in run.receivers.values():
            await rec.stop()
        nats.stop()
    triggers = trigger_times(fleet)
    run.lags_ms = {a["alarm_id"]: detection_lag_ms(a, triggers) for a in run.alarms}
    (workdir / "outcome.json").write_bytes(
        orjson.dumps({"alarms": run.alarms, "dead_letters": run.dead_letters, "lags": run.lags_ms})
    )
    return run


@pytest.fixture(scope="module")
def e2e_nats(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> NatsRun:
    workdir = tmp_path_factory.mktemp("e2e-nats")
    return asyncio.run(_run(pg_server.create_database(), workdir))


def test_fleet_is_published_through_the_mqtt_listener(e2e_nats: NatsRun) -> None:
    assert {t.scenario for t in e2e_nats.trips} == set(INCIDENTS) | {"normal"}
    assert e2e_nats.published > 0 and e2e_nats.unconfirmed == 0
    assert e2e_nats.started_late_s == 0.0, "the fleet was registered after its clock started"
    # the point of the re-key: some trip's devices report from different device partitions
    from telemetry.bus.partitions import partition_of

    split = [
        t
        for t in e2e_nats.trips
        if len({partition_of(d["device_id"], PARTITIONS) for d in t.devices}) > 1
    ]
    assert len([t for t in split if t.expected]) >= 3, [t.scenario for t in split]


def test_every_scenario_raises_exactly_its_alarms_once(e2e_nats: NatsRun) -> None:
    verdict: Verdict = match_alarms(e2e_nats.trips, e2e_nats.alarms)
    assert verdict.ok, verdict.explain() + f"\n{e2e_nats.diagnostics}"
    want = sum(len(t.expected) for t in e2e_nats.trips)
    assert len(verdict.matched) == want == len(e2e_nats.alarms) >= len(INCIDENTS) - 3
    normal = {t.trip_id for t in e2e_nats.trips if t.scenario == "normal"}
    assert not [a for a in e2e_nats.alarms if a["trip_id"] in normal]


def test_detection_latency_each_alarm_follows_its_trigger(e2e_nats: NatsRun) -> None:
    real = []
    for a in e2e_nats.alarms:
        lag = e2e_nats.lags_ms[a["alarm_id"]]
        assert lag is not None, f"no trigger found for {a['type']} {a['trip_id']}"
        real.append(lag / 1000 / SPEED)
    assert real and min(real) >= -0.05
    # not a speed assertion (see tests/test_e2e_fleet.py): the alarm came from its trigger
    assert max(real) <= SANITY_BOUND_S, sorted(real)


def test_webhooks_are_signed_once_per_alarm_and_only_of_own_trips(e2e_nats: NatsRun) -> None:
    shipper_of = {t.trip_id: t.trip["shipper"] for t in e2e_nats.trips}
    for shipper, rec in e2e_nats.receivers.items():
        assert rec.bad_signatures == 0
        assert all(shipper_of[e["data"]["trip_id"]] == shipper for e in rec.events)
        raised = [e for e in rec.events if e["type"] == "alarm.raised"]
        want = {a["alarm_id"] for a in e2e_nats.alarms if a["shipper"] == shipper}
        assert {e["data"]["alarm_id"] for e in raised} == want
        assert len(raised) == len(want)


def test_malformed_messages_become_their_dead_letters_once(e2e_nats: NatsRun) -> None:
    want = sorted(
        (d["device_id"], d["reason"])
        for t in e2e_nats.trips
        for d in t.expected_dead_letters
        if d["reason"] not in SERVER_REFUSED
    )
    got = sorted((d["device_id"], d["reason"]) for d in e2e_nats.dead_letters)
    assert want and got == want


def test_drained_bus_is_healthy_and_reports_no_backlog(e2e_nats: NatsRun) -> None:
    assert e2e_nats.health["status"] == "ok", e2e_nats.health
    assert 'cargowatch_bus_pending_messages{stage="devices"} 0.0' in e2e_nats.metrics
    assert 'cargowatch_bus_pending_messages{stage="trips"} 0.0' in e2e_nats.metrics


def test_serve_stops_cleanly_on_sigterm(e2e_nats: NatsRun) -> None:
    assert e2e_nats.exit_code == 0, e2e_nats.log[-3000:]
    assert "Traceback" not in e2e_nats.log, e2e_nats.log[-3000:]
