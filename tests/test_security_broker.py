"""Devices that cannot be spoofed, on a real Mosquitto written by ``cargowatch broker-config
mosquitto`` (issue 15's probe: an anonymous client faked a ``forced_open`` and an
``unlocked`` that completed a trip; the engine's fixed client id could be taken over).

A device without credentials, with wrong ones, or publishing on another device's topic
gets nothing stored and nothing evaluated; rotated and revoked credentials stop working
within 10 s; the engine's client id is its own.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import pytest_asyncio
from paho.mqtt.enums import CallbackAPIVersion

from api import create_app
from api.limits import ApiLimits
from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from tests.api_world import T0, trip_doc
from tests.services import free_port

pytestmark = [pytest.mark.services, pytest.mark.asyncio(loop_scope="session")]

ADMIN = "broker-admin-key-0123456789"
GPS, LOCK = "gps-sec-1", "lock-sec-1"


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mosquitto exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("mosquitto did not listen")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``broker-config mosquitto`` run as an operator would; the broker it describes."""
    directory = tmp_path_factory.mktemp("broker") / "mosquitto"
    port = free_port()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cargowatch", "broker-config", "mosquitto"),
            *(str(directory), "--listen", f"127.0.0.1:{port}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    command, url = done.stdout.strip().splitlines()
    proc = subprocess.Popen(shlex.split(command), stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield url, port
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(port: int, user: str | None, password: str | None, cid: str) -> tuple[Any, str]:
    """A device's MQTT 5 client: (client, connect reason)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5)
    if user is not None:
        client.username_pw_set(user, password)
    state: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, _f, rc, _p: state.setdefault("rc", str(rc))
    client.on_disconnect = lambda *a: state.setdefault("gone", True)
    client.user_data_set(state)
    try:
        client.connect("127.0.0.1", port)
    except OSError as exc:
        return client, f"refused: {exc}"
    client.loop_start()
    deadline = time.monotonic() + 5
    while "rc" not in state and "gone" not in state and time.monotonic() < deadline:
        time.sleep(0.02)
    return client, state.get("rc", "no answer")


def _gone(client: Any) -> bool:
    """The broker ended this client's session (paho keeps trying to reconnect)."""
    return bool(client._userdata.get("gone"))


def _publish(client: Any, topic: str, payload: dict[str, Any]) -> None:
    info = client.publish(topic, json.dumps(payload), qos=1)
    info.wait_for_publish(5)


def _close(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


def _fix(i: int) -> dict[str, Any]:
    return {"ts": T0 + i * 10_000, "lat": 31.45, "lon": 121.10 + i * 1e-4, "seq": i}


@pytest_asyncio.fixture(loop_scope="session")
async def engine(
    broker: tuple[str, int], tmp_path: Path
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    url, _ = broker
    settings = Settings(mqtt_url=url, db_url=f"sqlite:///{tmp_path / 'e.sqlite'}", admin_key=ADMIN)
    runtime = Runtime.open(settings)
    app = create_app(runtime, limits=ApiLimits(key_failures_per_min=1000))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://cw",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    async with runtime.running():
        deadline = time.monotonic() + 15
        while runtime.ingest is not None and not runtime.ingest.connected:
            assert time.monotonic() < deadline, "the engine did not connect with its credentials"
            await _sleep(0.05)
        yield runtime, client
    await client.aclose()
    runtime.close()


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


async def _settled(runtime: Runtime, s: float = 1.5) -> dict[str, int]:
    await _sleep(s)
    return runtime.store.count_telemetry()


async def test_only_a_device_with_its_own_credentials_reaches_the_store(
    engine: tuple[Runtime, httpx.AsyncClient], broker: tuple[str, int]
) -> None:
    runtime, api = engine
    _, port = broker
    assert runtime.ingest is not None
    assert runtime.ingest.client_id.startswith("cw-engine-")  # not the guessable default
    passwords = {}
    for device, kind in ((GPS, "gps"), (LOCK, "lock")):
        r = await api.post("/v1/devices", json={"device_id": device, "kind": kind})
        assert r.status_code == 201, r.text
        assert r.json()["mqtt_credentials_applied"] is True
        passwords[device] = r.json()["mqtt_password"]
        listed = await api.get(f"/v1/devices/{device}")
        assert passwords[device] not in listed.text  # shown once
    r = await api.post("/v1/trips", json=trip_doc("SEC-1", "pg", [GPS, LOCK]))
    assert r.status_code == 201, r.text

    # no credentials, wrong ones: refused by the broker
    for user, password in ((None, None), (GPS, "wrong"), ("nobody", "x")):
        client, rc = _connect(port, user, password, f"spoof-{user}")
        assert rc != "Success", (user, rc)
        _close(client)
    # the engine's client id is not the fixed one: taking that over does nothing to it
    thief, rc = _connect(port, GPS, passwords[GPS], "cargowatch-engine")
    _close(thief)

    gps, rc = _connect(port, GPS, passwords[GPS], "gps-client")
    assert rc == "Success"
    before = runtime.store.count_telemetry()
    # a fix on its own topic is stored; a forced_open on the lock's topic is not
    _publish(gps, f"devices/{GPS}/position", _fix(1))
    _publish(
        gps,
        f"devices/{LOCK}/lock",
        {"ts": T0 + 20_000, "event": "forced_open", "lat": 31.45, "lon": 121.1},
    )
    _publish(gps, f"devices/{LOCK}/position", _fix(2))
    after = await _settled(runtime)
    _close(gps)
    assert after["fixes"] == before["fixes"] + 1
    assert after["lock_events"] == before["lock_events"]
    assert runtime.store.lock_events([LOCK]) == []
    assert runtime.store.list_alarms(type="LOCK_TAMPER") == []
    assert runtime.ingest is not None and runtime.ingest.connected


async def _refused_within(port: int, device: str, password: str, seconds: float) -> float:
    started = time.monotonic()
    while True:
        client, rc = _connect(port, device, password, f"{device}-retry")
        _close(client)
        if rc != "Success":
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"{device}'s old password still works"
        await _sleep(0.2)


async def test_rotated_and_revoked_credentials_stop_working(
    engine: tuple[Runtime, httpx.AsyncClient], broker: tuple[str, int]
) -> None:
    _, api = engine
    _, port = broker
    r = await api.post("/v1/devices", json={"device_id": "gps-rot-1", "kind": "gps"})
    old = r.json()["mqtt_password"]
    live, rc = _connect(port, "gps-rot-1", old, "gps-rot-1")
    assert rc == "Success"
    r = await api.post("/v1/devices/gps-rot-1/credentials")
    assert r.status_code == 200, r.text
    new = r.json()["mqtt_password"]
    assert new != old and r.json()["mqtt_credentials_applied"] is True
    assert await _refused_within(port, "gps-rot-1", old, 10) < 10
    await _sleep(0.5)
    assert _gone(live)  # the session with the old password was ended
    _close(live)
    client, rc = _connect(port, "gps-rot-1", new, "gps-rot-1")
    assert rc == "Success"
    r = await api.delete("/v1/devices/gps-rot-1")
    assert r.status_code == 204
    await _sleep(0.5)
    assert _gone(client)
    _close(client)
    assert await _refused_within(port, "gps-rot-1", new, 10) < 10
    assert (await api.delete("/v1/devices/no-such-device")).status_code == 404
    assert (await api.post("/v1/devices/no-such-device/credentials")).status_code == 404


# -- TLS --------------------------------------------------------------------------------------
def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = [
        [
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=cargowatch test CA", "-keyout", str(ca_key), "-out", str(ca)),
        ],
        [
            *("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"),
            *("-keyout", str(key), "-out", str(csr)),
        ],
        [
            *("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key)),
            *("-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)),
        ],
    ]
    for args in run:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    return ca, cert, key


async def test_engine_and_devices_over_tls(tmp_path: Path) -> None:
    ca, cert, key = _make_certificates(tmp_path)
    port = free_port()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cargowatch", "broker-config", "mosquitto"),
            *(str(tmp_path / "tls"), "--tls-listen", f"127.0.0.1:{port}", "--no-plain"),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    command, url = done.stdout.strip().splitlines()
    assert url.startswith("mqtts://")
    proc = subprocess.Popen(shlex.split(command), stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        settings = Settings(
            mqtt_url=url,
            mqtt_ca=str(ca),
            db_url=f"sqlite:///{tmp_path / 't.sqlite'}",
            admin_key=ADMIN,
        )
        runtime = Runtime.open(settings)
        app = create_app(runtime)
        async with (
            runtime.running(),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://cw",
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as api,
        ):
            deadline = time.monotonic() + 15
            while runtime.ingest is not None and not runtime.ingest.connected:
                assert time.monotonic() < deadline, runtime.ingest.state.last_error
                await _sleep(0.05)
            r = await api.post("/v1/devices", json={"device_id": "gps-tls-1", "kind": "gps"})
            assert r.status_code == 201, r.text
            password = r.json()["mqtt_password"]
            device = paho.Client(
                CallbackAPIVersion.VERSION2, client_id="gps-tls-1", protocol=paho.MQTTv5
            )
            device.tls_set(ca_certs=str(ca))
            device.username_pw_set("gps-tls-1", password)
            device.connect("127.0.0.1", port)
            device.loop_start()
            for i in range(20):  # several, so TLS-buffered messages must be read on
                _publish(device, "devices/gps-tls-1/position", _fix(i))
            _close(device)
            deadline = time.monotonic() + 10
            while len(runtime.store.fixes(["gps-tls-1"])) < 20:
                assert time.monotonic() < deadline, "fixes over TLS were not stored"
                await _sleep(0.1)
            # without the CA the engine's peer check fails: plain TCP is not offered at all
            plain, rc = _connect(port, "gps-tls-1", password, "gps-plain")
            assert rc != "Success"
            _close(plain)
        runtime.close()
    finally:
        proc.terminate()
        proc.wait(10)
