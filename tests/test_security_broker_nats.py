"""Devices that cannot be spoofed in bus mode, on a real NATS server written by ``cargowatch
broker-config nats`` and a ``serve --bus`` engine (``BusRuntime``, one worker) in-process.

Device passwords issued through the API become the server's users without a restart
(``cargowatch.busmode.credentials``): a device without credentials, with wrong ones, or
publishing on another device's topic gets nothing stored and nothing evaluated; rotated and
revoked credentials stop working within 10 s (sessions with them are ended); a device reaches
the engine over the TLS MQTT listener, and plain MQTT is not offered there.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import pytest_asyncio
from paho.mqtt.enums import CallbackAPIVersion

from api import create_app
from api.limits import ApiLimits
from cargowatch.busmode.runtime import BusRuntime
from cargowatch.settings import Settings
from tests.bus_support import fix, lock_event, trip_doc
from tests.services import _wait_port, free_port
from tests.test_security_broker import _make_certificates

pytestmark = [pytest.mark.services, pytest.mark.asyncio(loop_scope="session")]

ADMIN = "nats-broker-admin-key-0123456789"
GPS, LOCK = "gps.sec:1", "lock-sec-1"  # a `.` in an id: the server's MQTT maps it to `//`


@dataclass
class Server:
    url: str
    mqtt_port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _start(directory: Path, *tls: str) -> Server:
    """``broker-config nats`` run as an operator would, then the server it describes. With
    ``tls`` (the certificate flags) the devices' port is the TLS listener."""
    port, mqtt_port = free_port(), free_port()
    device_flag = "--tls-listen" if tls else "--mqtt"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cargowatch", "broker-config", "nats", str(directory)),
            *("--listen", f"127.0.0.1:{port}", device_flag, f"127.0.0.1:{mqtt_port}"),
            *("--partitions", "2", *tls),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    command, url = done.stdout.strip().splitlines()
    log = open(directory / "nats.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(shlex.split(command), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    _wait_port(port, 15, proc)
    _wait_port(mqtt_port, 15, proc)
    return Server(url, mqtt_port, proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _start(tmp_path_factory.mktemp("nats-sec") / "nats")
    try:
        yield srv
    finally:
        srv.stop()


@asynccontextmanager
async def _engine(url: str, db: Path) -> AsyncIterator[tuple[BusRuntime, httpx.AsyncClient]]:
    """``serve --bus URL --workers 1`` in this process, and an admin API client."""
    settings = Settings(
        bus_url=url,
        db_url=f"sqlite:///{db}",
        admin_key=ADMIN,
        workers=1,
        bus_devices_gib=1,
        bus_trips_gib=1,
    )
    runtime = BusRuntime.open(settings)
    assert isinstance(runtime, BusRuntime)
    app = create_app(runtime, limits=ApiLimits(key_failures_per_min=1000))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://cw",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    try:
        async with runtime.running():
            deadline = time.monotonic() + 30
            while not all(w.ready.is_set() for w in runtime.workers):
                assert time.monotonic() < deadline, "the worker did not start"
                await asyncio.sleep(0.05)
            yield runtime, client
    finally:
        await client.aclose()
        runtime.close()


@pytest_asyncio.fixture(loop_scope="session")
async def engine(
    server: Server, tmp_path: Path
) -> AsyncIterator[tuple[BusRuntime, httpx.AsyncClient]]:
    async with _engine(server.url, tmp_path / "e.sqlite") as pair:
        yield pair


def _connect(port: int, user: str | None, password: str | None, ca: Path | None = None) -> Any:
    """A device's MQTT 3.1.1 client (what NATS speaks); its CONNACK in ``state(client)``."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"dev-{random.getrandbits(40):x}",
        protocol=paho.MQTTv311,
    )
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    if user is not None:
        client.username_pw_set(user, password)
    state: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, _f, rc, _p: state.setdefault("rc", str(rc))
    client.on_disconnect = lambda *a: state.setdefault("gone", True)
    client.user_data_set(state)
    try:
        client.connect("127.0.0.1", port)
    except OSError as exc:
        state["rc"] = f"refused: {exc}"
        return client
    client.loop_start()
    deadline = time.monotonic() + 5
    while "rc" not in state and "gone" not in state and time.monotonic() < deadline:
        time.sleep(0.02)
    state.setdefault("rc", "no answer")
    return client


def _rc(client: Any) -> str:
    return str(client._userdata["rc"])


def _gone(client: Any) -> bool:
    """The server ended this client's session."""
    return bool(client._userdata.get("gone"))


def _close(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


def _publish(client: Any, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(5)


async def _wait(cond: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_only_a_device_with_its_own_credentials_reaches_the_store(
    engine: tuple[BusRuntime, httpx.AsyncClient], server: Server
) -> None:
    runtime, api = engine
    now = int(time.time() * 1000)
    passwords = {}
    for device, kind in ((GPS, "gps"), (LOCK, "lock")):
        r = await api.post("/v1/devices", json={"device_id": device, "kind": kind})
        assert r.status_code == 201, r.text
        assert r.json()["mqtt_credentials_applied"] is True
        passwords[device] = r.json()["mqtt_password"]
        listed = await api.get(f"/v1/devices/{device}")
        assert passwords[device] not in listed.text  # shown once
    r = await api.post("/v1/trips", json=trip_doc("NSEC-1", "pg", [GPS, LOCK], now))
    assert r.status_code == 201, r.text

    # no credentials, wrong ones, an unknown user: refused by the server
    for user, password in ((None, None), (GPS, "wrong"), ("nobody", "x"), (GPS, passwords[LOCK])):
        client = await asyncio.to_thread(_connect, server.mqtt_port, user, password)
        assert _rc(client) != "Success", (user, _rc(client))
        _close(client)

    gps = await asyncio.to_thread(_connect, server.mqtt_port, GPS, passwords[GPS])
    assert _rc(gps) == "Success"
    # a forced_open and a fix on the lock's topic are refused; a fix on its own is stored
    spoof = lock_event(now - 30_000, "forced_open", 1, lat=31.45, lon=121.10)
    await asyncio.to_thread(_publish, gps, f"devices/{LOCK}/lock", spoof)
    await asyncio.to_thread(_publish, gps, f"devices/{LOCK}/position", fix(now, 121.1, 31.45, 2))
    _close(gps)
    gps = await asyncio.to_thread(_connect, server.mqtt_port, GPS, passwords[GPS])
    await asyncio.to_thread(_publish, gps, f"devices/{GPS}/position", fix(now, 121.1, 31.45, 3))
    _close(gps)
    await _wait(lambda: len(runtime.store.fixes([GPS])) == 1, 20, "the GPS unit's own fix")
    await asyncio.sleep(1.5)  # the lock's partition has had time for anything that got in
    assert runtime.store.lock_events([LOCK]) == []
    assert runtime.store.fixes([LOCK]) == []
    assert runtime.store.list_alarms(type="LOCK_TAMPER") == []
    assert runtime.store.count_telemetry()["dead_letters"] == 0


async def _refused_within(port: int, device: str, password: str, seconds: float) -> float:
    started = time.monotonic()
    while True:
        client = await asyncio.to_thread(_connect, port, device, password)
        _close(client)
        if _rc(client) != "Success":
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"{device}'s old password still works"
        await asyncio.sleep(0.2)


async def test_rotated_and_revoked_credentials_stop_working(
    engine: tuple[BusRuntime, httpx.AsyncClient], server: Server
) -> None:
    _, api = engine
    port = server.mqtt_port
    r = await api.post("/v1/devices", json={"device_id": "gps.rot:1", "kind": "gps"})
    assert r.status_code == 201, r.text
    old = r.json()["mqtt_password"]
    live = await asyncio.to_thread(_connect, port, "gps.rot:1", old)
    assert _rc(live) == "Success"
    r = await api.post("/v1/devices", json={"device_id": "gps-bystander", "kind": "gps"})
    bystander = await asyncio.to_thread(_connect, port, "gps-bystander", r.json()["mqtt_password"])
    assert _rc(bystander) == "Success"
    r = await api.post("/v1/devices/gps.rot:1/credentials")
    assert r.status_code == 200, r.text
    new = r.json()["mqtt_password"]
    assert new != old and r.json()["mqtt_credentials_applied"] is True
    assert await _refused_within(port, "gps.rot:1", old, 10) < 10
    await _wait(lambda: _gone(live), 10, "the session with the old password to end")
    _close(live)
    assert not _gone(bystander)  # the reload leaves other devices' sessions alone
    _close(bystander)
    client = await asyncio.to_thread(_connect, port, "gps.rot:1", new)
    assert _rc(client) == "Success"
    r = await api.delete("/v1/devices/gps.rot:1")
    assert r.status_code == 204
    await _wait(lambda: _gone(client), 10, "the revoked device's session to end")
    _close(client)
    assert await _refused_within(port, "gps.rot:1", new, 10) < 10
    # re-issued after revocation: the device may connect again
    r = await api.post("/v1/devices/gps.rot:1/credentials")
    assert r.status_code == 200 and r.json()["mqtt_credentials_applied"] is True
    client = await asyncio.to_thread(_connect, port, "gps.rot:1", r.json()["mqtt_password"])
    assert _rc(client) == "Success"
    _close(client)
    assert (await api.delete("/v1/devices/no-such-device")).status_code == 404
    assert (await api.post("/v1/devices/no-such-device/credentials")).status_code == 404


async def test_a_device_reaches_the_engine_over_tls(tmp_path: Path) -> None:
    ca, cert, key = _make_certificates(tmp_path)
    srv = _start(tmp_path / "nats", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        async with _engine(srv.url, tmp_path / "t.sqlite") as (runtime, api):
            r = await api.post("/v1/devices", json={"device_id": "gps-tls-1", "kind": "gps"})
            assert r.status_code == 201, r.text
            password = r.json()["mqtt_password"]
            now = int(time.time() * 1000)
            device = await asyncio.to_thread(_connect, srv.mqtt_port, "gps-tls-1", password, ca)
            assert _rc(device) == "Success"
            for i in range(5):
                payload = fix(now - 5000 + i * 1000, 121.1, 31.45, i)
                await asyncio.to_thread(_publish, device, "devices/gps-tls-1/position", payload)
            _close(device)
            await _wait(lambda: len(runtime.store.fixes(["gps-tls-1"])) == 5, 20, "TLS fixes")
            # plain MQTT on the same port is not a way in
            plain = await asyncio.to_thread(_connect, srv.mqtt_port, "gps-tls-1", password)
            assert _rc(plain) != "Success"
            _close(plain)
    finally:
        srv.stop()


async def test_broker_config_refuses_half_a_tls_setup(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    for flags in (
        ["--tls-cert", str(cert)],  # no key
        ["--tls-listen", "127.0.0.1:8883"],  # no certificate
        ["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.key")],
    ):
        done = await asyncio.to_thread(
            subprocess.run,
            [*(sys.executable, "-m", "cargowatch", "broker-config", "nats"), str(tmp_path), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (flags, done.stdout)
        assert "cargowatch broker-config nats:" in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""
