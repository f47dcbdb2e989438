"""Helpers of the bus-mode tests: a small fleet whose GPS unit and lock of each truck sit in
different device partitions, paho devices publishing over the NATS server's MQTT listener
(MQTT 3.1.1, QoS 1), and waiting."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from telemetry.bus.partitions import partition_of
from telemetry.parse import format_ts

# A trip near Shanghai: origin, a 3-vertex route, one consignee stop (tests/api_world.py).
ORIGIN = (121.10, 31.45)
AWAY = (121.20, 31.40)  # on the route, far from the consignee
ROUTE = [[121.10, 31.45], [121.30, 31.35], [121.47, 31.23]]
PASSWORD = "device-secret"


def trip_doc(trip_id: str, shipper: str, devices: list[str], now_ms: int) -> dict[str, Any]:
    """A plan that started an hour ago and is due in six hours (no LATE_ARRIVAL meanwhile)."""
    return {
        "trip_id": trip_id,
        "shipper": shipper,
        "vehicle": f"V-{trip_id}",
        "devices": devices,
        "origin": {
            "name": "Taicang DC",
            "geometry": {"type": "Point", "coordinates": list(ORIGIN)},
            "radius_m": 300,
        },
        "route": {"type": "LineString", "coordinates": ROUTE},
        "corridor_m": 500,
        "stops": [
            {
                "stop_id": "S1",
                "name": "Consignee A",
                "geometry": {"type": "Point", "coordinates": [121.47, 31.23]},
                "radius_m": 200,
                "eta": format_ts(now_ms + 6 * 3600_000),
                "max_dwell_min": 120,
                "unlock_allowed": True,
            }
        ],
        "planned_start": format_ts(now_ms - 3600_000),
        "rules": {"stop_max_min": 45},
    }


@dataclass
class Truck:
    trip_id: str
    gps: str
    lock: str


def fleet(n: int, partitions: int, prefix: str = "t") -> list[Truck]:
    """``n`` trucks; each one's GPS unit and lock report from different device partitions
    (ids with ``.`` and ``:`` included, as the contract allows)."""
    out: list[Truck] = []
    k = 0
    while len(out) < n:
        i = len(out)
        gps = f"{prefix}{i}.gps:{k}"
        lock = f"{prefix}{i}-lock:{k}"
        k += 1
        if partition_of(gps, partitions) != partition_of(lock, partitions):
            out.append(Truck(f"TRIP-{prefix}{i}", gps, lock))
    return out


def fix(ts: int, lon: float, lat: float, seq: int) -> bytes:
    return orjson.dumps({"ts": ts, "lat": lat, "lon": lon, "speed_kmh": 40.0, "seq": seq})


def lock_event(ts: int, event: str, seq: int, **extra: Any) -> bytes:
    return orjson.dumps({"ts": ts, "event": event, "seq": seq, **extra})


@dataclass
class Device:
    """One device's MQTT session (3.1.1, QoS 1) on the NATS server's MQTT listener."""

    device_id: str
    port: int
    password: str = PASSWORD
    client: paho.Client | None = field(default=None, repr=False)

    def connect(self) -> Device:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"d-{random.getrandbits(40):x}",
            protocol=paho.MQTTv311,
        )
        c.username_pw_set(self.device_id, self.password)
        connected: list[int] = []
        c.on_connect = lambda _c, _u, _f, rc, _p: connected.append(rc.value)
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        wait_for(lambda: bool(connected), 10, f"{self.device_id} connected")
        assert connected[0] == 0, f"{self.device_id}: CONNACK {connected[0]}"
        self.client = c
        return self

    def publish(self, kind: str, payloads: Iterable[bytes]) -> None:
        assert self.client is not None
        infos = [
            self.client.publish(f"devices/{self.device_id}/{kind}", p, qos=1) for p in payloads
        ]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str = "") -> float:
    """Poll ``cond`` until true; returns the seconds it took; AssertionError on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


class WorkerThread:
    """A ``BusWorker`` on its own event loop in a thread (as a process would run it)."""

    def __init__(self, settings: Any, store: Any, **kwargs: Any) -> None:
        import asyncio
        import threading

        from alerts import LiveHub
        from cargowatch.worker import BusWorker
        from core.clock import SystemClock

        self.worker = BusWorker(settings, store=store, clock=SystemClock(), hub=LiveHub(), **kwargs)
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._task = self._loop.create_task(self.worker.run())
            try:
                self._loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # reported by stop()
                self.error = exc
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="bus-worker", daemon=True)

    def start(self) -> WorkerThread:
        self._thread.start()
        wait_for(lambda: self.worker.ready.is_set() or self.error is not None, 20, "ready")
        assert self.error is None, self.error
        return self

    def stop(self) -> None:
        if self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        if self.error is not None:
            raise self.error


def spawn(args: list[str], log_path: Any, **env_extra: str) -> Any:
    """``python -m cargowatch ARGS`` in its own process (stdout/stderr to ``log_path``)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_extra)
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cargowatch", *args],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def lease_pids(url: str) -> dict[str, int]:
    """Partition lease key (``dev.p.N`` / ``trip.p.N``) → pid of the worker holding it (the
    owner name is ``{host}-{pid}-{random}``, ``telemetry.bus.leases.default_owner``)."""
    import asyncio

    import nats
    from nats.js.errors import BucketNotFoundError, NoKeysError

    async def read() -> dict[str, int]:
        nc = await nats.connect(url)
        try:
            try:
                kv = await nc.jetstream().key_value("cw_leases")
            except BucketNotFoundError:
                return {}  # no worker has started yet
            try:
                keys = await kv.keys()
            except NoKeysError:
                return {}
            out = {}
            for k in keys:
                if ".p." in k:
                    try:
                        entry = await kv.get(k)
                    except Exception:
                        continue
                    if entry.value:
                        out[k] = int(entry.value.decode().split("-")[-2])
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def consumer_states(url: str) -> dict[str, tuple[int, int, int, int]]:
    """Every partition consumer's (pending, ack pending, redelivered, ack floor stream seq)
    (shown when a bus test fails)."""
    import asyncio

    import nats

    async def read() -> dict[str, tuple[int, int, int, int]]:
        nc = await nats.connect(url)
        out = {}
        try:
            js = nc.jetstream()
            streams = [str(i.config.name) for i in await js.streams_info()]
            for stream in (s for s in streams if s.startswith(("DEVICES_", "TRIPS_"))):
                for info in await js.consumers_info(stream):
                    out[f"{stream}.{info.name}"] = (
                        info.num_pending or 0,
                        info.num_ack_pending or 0,
                        info.num_redelivered or 0,
                        info.ack_floor.stream_seq if info.ack_floor else 0,
                    )
        finally:
            await nc.close()
        return out

    return asyncio.run(read())


class LiveReader:
    """Reads ``/v1/live`` (SSE) in a thread and keeps every event (type, data)."""

    def __init__(self, base_url: str, key: str) -> None:
        import threading

        self.events: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []  # time.time() each event arrived
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._url = f"{base_url}/v1/live"
        self._key = key
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self._key}"}
        with (
            httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as http,
            http.stream("GET", self._url, headers=headers) as response,
        ):
            self.connected.set()
            kind = ""
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.times.append(time.time())
                    self.events.append((kind, orjson.loads(line[6:])))

    def alarms_raised(self) -> set[str]:
        return {d["alarm_id"] for k, d in self.events if k == "alarm.raised" and "alarm_id" in d}

    def close(self) -> None:
        self._stop.set()


class WebhookReceiver:
    """A local HTTP endpoint counting each webhook delivery by event id."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[dict[str, Any]] = []
        lock = threading.Lock()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    bodies.append(orjson.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
