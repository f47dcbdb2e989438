"""The real cargowatch behind the desk page, for the browser test: runtime + API served by
uvicorn on a free port, a key per role, and a small scripted fleet on real Cairns roads
whose messages go through the real MQTT broker.

Not a test module (it holds no tests): the desk's browser test modules import it, and its
browser fixtures (``world``, ``browser``, ``page``) at the bottom.

The fleet (every ``acme`` id contains "ACME" so leak checks can look for it):

| trip | shipper | history (40 min) | state at the end |
|---|---|---|---|
| PG-1 | pg | a 5-minute detour 900 m off the route (ROUTE_DEVIATION), then | on route; a live |
| | | 6 minutes at its first consignee (unsealed, sealed again) | tamper comes later |
| PG-2 | pg | stops for the last 8 minutes, lock battery 14 % (LOW_BATTERY) | stopped |
| PG-3 | pg | drives along its route | on route |
| ACME-1 | acme | 100 s at 104 km/h (SPEEDING); off route for the last 80 s | off route |
| ACME-2 | acme | drives, then falls silent | signal lost 15 minutes ago |
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import paho.mqtt.client as paho
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from starlette.routing import Mount

import api
from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from tests.services import MosquittoServer

ADMIN_KEY = "admin-secret"
STATIC_DIR = Path(api.__file__).parent / "static"
ROADS = Path(__file__).parent.parent / "simulators" / "data" / "cairns_roads.json"
MIN = 60_000


def iso(ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with milliseconds."""
    secs, rem = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rem:03d}Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- geometry ---------------------------------------------------------------------------------
def _road(index: int) -> list[list[float]]:
    """Vertices [lon, lat] of one Cairns road shape (delta-encoded micro-degrees)."""
    shape = json.loads(ROADS.read_text())["shapes"][index]
    lats = itertools.accumulate(shape["lat_e6"])
    lons = itertools.accumulate(shape["lon_e6"])
    return [[lon / 1e6, lat / 1e6] for lon, lat in zip(lons, lats, strict=True)]


def _metres(a: list[float], b: list[float]) -> float:
    lat = math.radians((a[1] + b[1]) / 2)
    dx = (b[0] - a[0]) * 111_320.0 * math.cos(lat)
    dy = (b[1] - a[1]) * 110_574.0
    return math.hypot(dx, dy)


class Walker:
    """Positions along a polyline by distance, and points offset to its left."""

    def __init__(self, coords: list[list[float]]) -> None:
        self.coords = coords
        self.cum = [0.0]
        for a, b in itertools.pairwise(coords):
            self.cum.append(self.cum[-1] + _metres(a, b))

    @property
    def length(self) -> float:
        return self.cum[-1]

    def at(self, s: float, offset_m: float = 0.0) -> tuple[float, float]:
        """(lat, lon) at distance ``s`` along the line, ``offset_m`` to its left."""
        s = min(max(s, 0.0), self.length)
        i = max(0, min(len(self.cum) - 2, next(k for k, c in enumerate(self.cum) if c >= s) - 1))
        a, b = self.coords[i], self.coords[i + 1]
        seg = max(self.cum[i + 1] - self.cum[i], 1e-9)
        f = (s - self.cum[i]) / seg
        lon = a[0] + (b[0] - a[0]) * f
        lat = a[1] + (b[1] - a[1]) * f
        if offset_m:
            # Unit normal in metres, turned back into degrees at this latitude.
            kx = 111_320.0 * math.cos(math.radians(lat))
            ky = 110_574.0
            dx, dy = (b[0] - a[0]) * kx, (b[1] - a[1]) * ky
            n = math.hypot(dx, dy) or 1.0
            lon += (-dy / n) * offset_m / kx
            lat += (dx / n) * offset_m / ky
        return lat, lon


# -- the fleet --------------------------------------------------------------------------------
@dataclass
class ScriptedTrip:
    """A trip document and the device messages of its history."""

    trip: dict[str, Any]
    walker: Walker
    messages: list[tuple[str, str, Any]] = field(default_factory=list)  # (suffix, device, body)
    last_fix: dict[str, Any] | None = None

    @property
    def trip_id(self) -> str:
        return str(self.trip["trip_id"])

    @property
    def gps(self) -> str:
        return str(self.trip["devices"][1])

    @property
    def lock(self) -> str:
        return str(self.trip["devices"][0])


def _speed_ms(walker: Walker) -> float:
    """Cruising speed: 40 km/h, slower on a road too short for 40 minutes of it."""
    return min(40 / 3.6, 0.85 * walker.length / (40 * 60))


def _stop_distance(walker: Walker, from_min: float) -> float:
    """Where a truck of ``_history`` stands still from ``from_min`` minutes before now: the
    distance it covered in the 20-second steps before (the first fix does not move)."""
    steps = math.ceil((40 - from_min) * 3) - 1
    return _speed_ms(walker) * 20 * steps


def _trip(
    trip_id: str,
    shipper: str,
    vehicle: str,
    road: int,
    now: int,
    tag: str,
    visit: tuple[float, float] | None = None,
) -> ScriptedTrip:
    """A trip on a Cairns road to a consignee at its end; with ``visit`` (minutes before now,
    from, to) an earlier consignee where the truck stops and is unsealed on time."""
    coords = _road(road)
    walker = Walker(coords)
    lat0, lon0 = coords[0][1], coords[0][0]
    end = walker.at(walker.length)
    stops = []
    if visit:
        lat, lon = walker.at(_stop_distance(walker, visit[0]))
        stops.append(
            {
                "stop_id": "S1",
                "name": "Smithfield DC",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "radius_m": 200,
                "eta": iso(now - int(visit[0] * MIN) + 6 * MIN),
                "max_dwell_min": 60,
                "unlock_allowed": True,
            }
        )
    stops.append(
        {
            "stop_id": f"S{len(stops) + 1}",
            "name": f"Consignee {vehicle[-3:]}",
            "geometry": {"type": "Point", "coordinates": [end[1], end[0]]},
            "radius_m": 200,
            "eta": iso(now + 180 * MIN),
            "max_dwell_min": 120,
            "unlock_allowed": True,
        }
    )
    doc = {
        "trip_id": trip_id,
        "shipper": shipper,
        "vehicle": vehicle,
        "devices": [f"lock-{tag}", f"gps-{tag}"],
        "origin": {
            "name": "Cairns depot",
            "geometry": {"type": "Point", "coordinates": [lon0, lat0]},
            "radius_m": 300,
        },
        "route": {"type": "LineString", "coordinates": coords},
        "corridor_m": 500,
        "stops": stops,
        "planned_start": iso(now - 45 * MIN),
    }
    return ScriptedTrip(doc, walker)


def _history(
    st: ScriptedTrip,
    now: int,
    *,
    until: int,
    detour: tuple[int, int] | None = None,
    stop_from: int | None = None,
    speeding: tuple[float, float] | None = None,
    off_from: float | None = None,
    visit: tuple[float, float] | None = None,
    battery: int = 88,
) -> None:
    """Fixes every 20 s from 40 min ago to ``until`` (ms before now), the seal at the start;
    times of the options are minutes before now (from, to)."""
    start = now - 40 * MIN
    speed_ms = _speed_ms(st.walker)
    lat, lon = st.walker.at(0)
    st.messages.append(
        (
            "lock",
            st.lock,
            {
                "ts": start - MIN,
                "event": "locked",
                "method": "rfid",
                "lat": lat,
                "lon": lon,
                "battery_pct": battery,
                "seq": 1,
            },
        )
    )
    fixes: list[dict[str, Any]] = []
    s = 0.0
    t = start
    seq = 0
    while t <= now - until:
        minute = (now - t) / MIN  # minutes before now
        moving = stop_from is None or minute > stop_from
        if visit and visit[1] <= minute <= visit[0]:
            moving = False
        if moving and fixes:
            s += speed_ms * 20
        offset = 0.0
        if detour and detour[1] <= minute <= detour[0]:
            offset = 900.0
        if off_from is not None and minute <= off_from:
            offset = 1200.0
        kmh = round(speed_ms * 3.6 + 3 * math.sin(seq), 1) if moving else 0.0
        if speeding and speeding[1] <= minute <= speeding[0]:
            kmh = 104.0
        lat, lon = st.walker.at(s, offset)
        seq += 1
        fixes.append(
            {
                "ts": iso(t),
                "lat": round(lat, 6),
                "lon": round(lon, 6),
                "speed_kmh": kmh,
                "heading_deg": 90,
                "hdop": 0.9,
                "sats": 11,
                "battery_pct": 90,
                "seq": seq,
            }
        )
        t += 20_000
    st.last_fix = fixes[-1]
    if visit:
        # Unsealed and sealed again at the consignee, a minute after arriving / before leaving.
        lat, lon = st.walker.at(_stop_distance(st.walker, visit[0]))
        for seq_no, (minute, event) in enumerate(
            ((visit[0] - 1, "unlocked"), (visit[1] + 1, "locked")), start=10
        ):
            st.messages.append(
                (
                    "lock",
                    st.lock,
                    {
                        "ts": now - int(minute * MIN),
                        "event": event,
                        "method": "rfid",
                        "lat": lat,
                        "lon": lon,
                        "battery_pct": battery,
                        "seq": seq_no,
                    },
                )
            )
    # One backlog message per 20 fixes: the contract's array form.
    for i in range(0, len(fixes), 20):
        st.messages.append(("position", st.gps, fixes[i : i + 20]))
    if battery <= 15:
        st.messages.append(
            (
                "lock",
                st.lock,
                {"ts": now - 2 * MIN, "event": "heartbeat", "battery_pct": battery, "seq": 2},
            )
        )


def build_fleet(now: int) -> list[ScriptedTrip]:
    """The five trips of the module docstring, with their message histories."""
    run = uuid.uuid4().hex[:4]
    pg1 = _trip(f"PG-{run}-1", "pg", "QLD 412-KTR", 0, now, f"pg1{run}", visit=(15, 9))
    _history(pg1, now, until=10_000, detour=(28, 23), visit=(15, 9))
    pg2 = _trip(f"PG-{run}-2", "pg", "QLD 077-MZN", 48, now, f"pg2{run}")
    _history(pg2, now, until=10_000, stop_from=8, battery=14)
    pg3 = _trip(f"PG-{run}-3", "pg", "QLD 618-PLX", 22, now, f"pg3{run}")
    _history(pg3, now, until=10_000)
    ac1 = _trip(f"ACME-{run}-1", "acme", "QLD 905-BWE", 35, now, f"ac1{run}")
    _history(ac1, now, until=10_000, speeding=(20, 18.4), off_from=1.4)
    ac2 = _trip(f"ACME-{run}-2", "acme", "QLD 233-HJA", 32, now, f"ac2{run}")
    _history(ac2, now, until=15 * MIN)
    return [pg1, pg2, pg3, ac1, ac2]


def tamper_message(st: ScriptedTrip, now: int) -> tuple[str, str, dict[str, Any]]:
    """A rope-cut event on the trip's lock, now, at its last position."""
    fix = st.last_fix or {}
    return (
        "lock",
        st.lock,
        {
            "ts": now,
            "event": "rope_cut",
            "lat": fix.get("lat"),
            "lon": fix.get("lon"),
            "battery_pct": 80,
            "seq": 99,
        },
    )


# -- MQTT -------------------------------------------------------------------------------------
class Publisher:
    """A paho client publishing QoS 1 under the runtime's topic prefix."""

    def __init__(self, mqtt_url: str, prefix: str) -> None:
        u = urlparse(mqtt_url)
        self.prefix = prefix
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"desk-test-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883)
        self.client.loop_start()

    def publish(self, messages: list[tuple[str, str, Any]]) -> None:
        infos = [
            self.client.publish(f"{self.prefix}/{device}/{suffix}", json.dumps(body), qos=1)
            for suffix, device, body in messages
        ]
        for info in infos:
            info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- the server -------------------------------------------------------------------------------
def serve_desk_page(app: FastAPI, runtime: Runtime) -> None:
    """Mount the page at ``/`` (and ``/config.json``) unless the app already does."""
    paths = {getattr(r, "path", None) for r in app.routes}
    if "/config.json" not in paths:
        app.add_api_route("/config.json", lambda: {"tiles": runtime.tiles}, include_in_schema=False)
    if not any(isinstance(r, Mount) and r.path in ("", "/") for r in app.routes):
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="desk")


@dataclass
class DeskServer:
    """A running cargowatch; ``keys`` maps a role name to its API key."""

    url: str
    app: FastAPI
    runtime: Runtime
    server: uvicorn.Server
    thread: threading.Thread
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=10
        )

    def stop(self) -> None:
        api.begin_shutdown(self.app)  # end the SSE streams, or uvicorn waits for them
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.runtime.close()


DESK_OPERATOR = "desk-07"  # the desk key's name: recorded as `by` on what it does


def start_desk(mqtt_url: str, db_url: str, prefix: str, tiles: str = "off") -> DeskServer:
    """A running cargowatch. ``tiles`` is off by default: a browser test never reaches the
    internet for a base map (tests serving tiles locally pass their own template)."""
    settings = Settings(
        mqtt_url=mqtt_url,
        db_url=db_url,
        admin_key=ADMIN_KEY,
        topic_prefix=prefix,
        client_id=f"cw-desk-{uuid.uuid4().hex[:8]}",
        tiles=tiles,
    )
    runtime = Runtime.open(settings)
    app = api.create_app(runtime, heartbeat_s=5.0)
    serve_desk_page(app, runtime)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="desk-uvicorn", daemon=True)
    thread.start()
    desk = DeskServer(f"http://127.0.0.1:{port}", app, runtime, server, thread)
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the desk server did not start")
        time.sleep(0.05)
    desk.keys["admin"] = ADMIN_KEY
    for name, role, shipper, label in (
        ("desk", "desk", None, DESK_OPERATOR),
        ("desk2", "desk", None, "desk-12"),
        ("fleet", "fleet", None, "fleet-test"),
        ("pg", "shipper", "pg", "pg-portal"),
        ("acme", "shipper", "acme", "acme-portal"),
    ):
        desk.keys[name] = runtime.create_api_key(role, shipper, label)["key"]
    while runtime.ingest is not None and not runtime.ingest.connected:
        if time.monotonic() > deadline:
            raise RuntimeError("the runtime did not connect to the broker")
        time.sleep(0.05)
    return desk


FENCES = [
    {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [145.7105, -16.8725]},
        "properties": {"kind": "rest_area", "name": "Smithfield truck stop", "radius_m": 400},
    },
    {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [  # clear of every scripted road: a risk zone raises RISK_ZONE_ENTRY
                    [145.775, -16.960],
                    [145.795, -16.960],
                    [145.795, -16.972],
                    [145.775, -16.972],
                    [145.775, -16.960],
                ]
            ],
        },
        "properties": {"kind": "risk_zone", "name": "Portsmith yards"},
    },
]


def depot_on_route(st: ScriptedTrip) -> dict[str, Any]:
    """A depot fence the trip drives through 35-33 minutes before now (geofence.entered and
    geofence.exited on its replay timeline)."""
    lat, lon = st.walker.at(_stop_distance(st.walker, 34))
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"kind": "depot", "name": "Edmonton depot", "radius_m": 250},
    }


def load_fleet(desk: DeskServer, fleet: list[ScriptedTrip], publisher: Publisher) -> None:
    """Create the geofences (two fixed, a depot on the first trip's road) and the trips
    through the API, then publish the histories."""
    with desk.client("admin") as c:
        for fence in [*FENCES, depot_on_route(fleet[0])]:
            c.post("/v1/geofences", json=fence).raise_for_status()
        for st in fleet:
            r = c.post("/v1/trips", json=st.trip)
            r.raise_for_status()
    for st in fleet:
        publisher.publish(st.messages)


def wait_for_alarms(
    desk: DeskServer, wanted: dict[str, str], timeout_s: float = 30
) -> dict[str, dict[str, Any]]:
    """Poll until each trip in ``wanted`` (trip_id -> alarm type) has that alarm."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict[str, Any]] = {}
    with desk.client("admin") as c:
        while True:
            alarms = c.get("/v1/alarms", params={"limit": 1000}).json()
            for trip_id, kind in wanted.items():
                for a in alarms:
                    if a["trip_id"] == trip_id and a["type"] == kind:
                        found[trip_id] = a
            if len(found) == len(wanted):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"alarms not raised: {set(wanted) - set(found)}; {alarms}")
            time.sleep(0.2)


def alarms_of(desk: DeskServer, trip_id: str) -> Iterator[dict[str, Any]]:
    with desk.client("admin") as c:
        yield from c.get("/v1/alarms", params={"trip_id": trip_id}).json()


# -- browser fixtures (shared by the desk's browser test modules) ----------------------------
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
OPERATOR = DESK_OPERATOR


class World:
    """The running system, its fleet and a publisher, shared by the tests of this module."""

    def __init__(self, desk: DeskServer, fleet: list[ScriptedTrip], publisher: Publisher) -> None:
        self.desk = desk
        self.fleet = {st.trip_id.split("-", 1)[0] + st.trip_id[-2:]: st for st in fleet}
        self.publisher = publisher

    def trip(self, name: str) -> ScriptedTrip:
        """PG-1, PG-2, PG-3, ACME-1, ACME-2."""
        return self.fleet[name]

    def alarm(self, trip_id: str, kind: str) -> dict[str, Any]:
        with self.desk.client("admin") as c:
            found = [
                a
                for a in c.get("/v1/alarms", params={"trip_id": trip_id}).json()
                if a["type"] == kind
            ]
        assert found, f"no {kind} alarm for {trip_id}"
        return found[0]


@pytest.fixture(scope="module")
def world(mosquitto: MosquittoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    mqtt_url = os.environ.get("CARGOWATCH_TEST_MQTT") or mosquitto.url
    db = tmp_path_factory.mktemp("desk") / "desk.sqlite"
    prefix = f"desk{os.getpid()}"
    desk = start_desk(mqtt_url, f"sqlite:///{db}", prefix)
    publisher = Publisher(mqtt_url, prefix)
    try:
        fleet = build_fleet(int(time.time() * 1000))
        load_fleet(desk, fleet, publisher)
        w = World(desk, fleet, publisher)
        wait_for_alarms(
            desk,
            {
                w.trip("PG-1").trip_id: "ROUTE_DEVIATION",
                w.trip("PG-2").trip_id: "LOW_BATTERY",
                w.trip("ACME-1").trip_id: "SPEEDING",
            },
        )
        yield w
    finally:
        publisher.close()
        desk.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, timezone_id="UTC")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # the page's Content-Security-Policy (api/security.py) must never block the page itself
    pg.on("console", lambda m: errors.append(m.text) if "Security Policy" in m.text else None)
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"JavaScript errors or CSP violations on the page: {errors}"


def shots_dir(tmp_path: Path) -> Path:
    target = os.environ.get("CARGOWATCH_DESK_SCREENSHOTS")
    path = Path(target) if target else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def sign_in(page: Page, world: World, role: str, hash_: str = "") -> None:
    page.goto(world.desk.url + "/" + hash_)
    page.fill("#signin-key", world.desk.keys[role])
    page.click("#signin-form button[type=submit]")
    expect(page.locator("body")).to_have_attribute("data-ready", "1")
    expect(page.locator("#feed-status")).to_have_attribute("data-state", "live")


def row(page: Page, trip_id: str, kind: str) -> Locator:
    return page.locator(f"#queue-body tr[data-type='{kind}']", has_text=trip_id)


# -- a local tile server ----------------------------------------------------------------------
def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A plain-colour PNG (no imaging library needed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


class TileServer:
    """XYZ tiles on 127.0.0.1 for the browser tests (they never reach the internet): every
    ``/{z}/{x}/{y}.png`` is a light-green square; ``requests`` lists the paths served."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        tile = _png(256, 256, (214, 232, 200))
        served = self.requests = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[2].endswith(".png"):
                    served.append(self.path)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(tile)))
                    self.end_headers()
                    self.wfile.write(tile)
                else:
                    self.send_error(404)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{z}}/{{x}}/{{y}}.png"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
