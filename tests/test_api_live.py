"""``GET /v1/live``: SSE frames, tenancy of the stream, heartbeat, clean ends.

httpx's ASGITransport buffers whole responses, so the stream is read by calling the ASGI app
directly: the test sees each frame as it is sent and disconnects when it wants.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from api import begin_shutdown
from api.render import iso
from rules.events import AlarmType
from telemetry.ingest import RawMessage
from tests.api_world import OTHER, OWN, T0, World, trip_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")


class SseReader:
    """One SSE request against the ASGI app; ``frames`` holds what arrived so far."""

    def __init__(self, world: World, key: str, query: str = "", spec: str = "2.3") -> None:
        # 2.3 (what uvicorn speaks): the app listens for http.disconnect; 2.4: the server's
        # send raises OSError once the client has gone.
        self.spec = spec
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": spec},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/live",
            "raw_path": b"/v1/live",
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"cw.test"), (b"authorization", f"Bearer {key}".encode())],
            "client": ("127.0.0.1", 5000),
            "server": ("cw.test", 80),
            "state": {},
        }
        self.app = world.app
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.buffer = b""
        self.more_body = True
        self._disconnect = asyncio.Event()
        self._arrived = asyncio.Event()
        self._sent_request = False
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_request:
            self._sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if self.spec == "2.4" and self._disconnect.is_set():
            raise OSError("client disconnected")
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.buffer += message.get("body", b"")
            self.more_body = message.get("more_body", False)
        self._arrived.set()

    async def __aenter__(self) -> SseReader:
        self.task = asyncio.create_task(self.app(self.scope, self._receive, self._send))
        await self.wait_for(lambda: self.status is not None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._disconnect.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def wait_for(self, condition: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._arrived.clear()
                if self.task is not None and self.task.done():
                    self.task.result()
                    if not condition():
                        raise AssertionError("the response ended before the condition held")
                    return
                await self._arrived.wait()

    @property
    def frames(self) -> list[str]:
        return [f for f in self.buffer.decode().split("\n\n") if f]

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for frame in self.frames:
            lines = dict(
                line.split(": ", 1)
                for line in frame.split("\n")
                if not line.startswith(":") and ": " in line
            )
            if "event" in lines:
                out.append((lines["event"], json.loads(lines["data"])))
        return out


async def test_stream_frames_alarms_and_transitions(world: World) -> None:
    async with SseReader(world, world.keys["desk"]) as sse:
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        alarm_id = world.raise_alarm(world.tenants[OWN], AlarmType.LOCK_TAMPER)
        await sse.wait_for(lambda: any(e == "alarm.raised" for e, _ in sse.events()))
        r = await world.client.post(
            f"/v1/alarms/{alarm_id}/ack", json={"by": "desk-07"}, headers=world.auth("desk")
        )
        assert r.status_code == 200
        await sse.wait_for(lambda: any(e == "alarm.acknowledged" for e, _ in sse.events()))
    raised = [d for e, d in sse.events() if e == "alarm.raised"]
    assert raised[0]["alarm_id"] == alarm_id and raised[0]["type"] == "LOCK_TAMPER"
    assert sse.buffer.startswith(b"retry: ")
    # each frame is exactly "event: <type>\ndata: <one line of json>"
    for frame in sse.frames:
        if frame.startswith("event: "):
            lines = frame.split("\n")
            assert len(lines) == 2 and lines[1].startswith("data: {")


async def test_shipper_stream_carries_only_its_events(world: World) -> None:
    async with (
        SseReader(world, world.keys["shipper"]) as mine,
        SseReader(world, world.keys["admin"]) as everyone,
    ):
        world.raise_alarm(world.tenants[OTHER], AlarmType.SPEEDING)
        world.raise_alarm(world.tenants[OTHER], AlarmType.LOCK_TAMPER)
        own = world.raise_alarm(world.tenants[OWN], AlarmType.LOW_BATTERY)
        await mine.wait_for(lambda: any(d.get("alarm_id") == own for _, d in mine.events()))
        await everyone.wait_for(lambda: len(everyone.events()) >= 3)
    assert {d["shipper"] for _, d in mine.events()} == {OWN}
    assert OTHER not in mine.buffer.decode()
    assert {d["shipper"] for _, d in everyone.events()} == {OWN, OTHER}


async def test_types_filter(world: World) -> None:
    async with SseReader(world, world.keys["fleet"], "types=alarm.acknowledged") as sse:
        alarm_id = world.raise_alarm(world.tenants[OTHER], AlarmType.SPEEDING)
        await world.client.post(
            f"/v1/alarms/{alarm_id}/ack", json={"by": "d"}, headers=world.auth("desk")
        )
        await sse.wait_for(lambda: bool(sse.events()))
    assert [e for e, _ in sse.events()] == ["alarm.acknowledged"]


async def test_heartbeat_while_idle(world: World) -> None:
    # the world's app beats every 0.2 s
    async with SseReader(world, world.keys["shipper"]) as sse:
        await sse.wait_for(lambda: sse.buffer.count(b": heartbeat\n\n") >= 2)
    assert sse.events() == []


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_disconnect_releases_the_subscription(world: World, spec: str) -> None:
    hub = world.runtime.hub
    before = hub.subscriber_count
    async with SseReader(world, world.keys["desk"], spec=spec):
        assert hub.subscriber_count == before + 1
    assert hub.subscriber_count == before


async def test_shutdown_ends_open_streams(world: World) -> None:
    async with SseReader(world, world.keys["desk"]) as sse:
        begin_shutdown(world.app)
        await sse.wait_for(lambda: not sse.more_body)
        assert sse.task is not None
        await asyncio.wait_for(sse.task, 2)
    world.app.state.live.stopping.clear()


async def test_hub_close_ends_open_streams(world: World) -> None:
    async with SseReader(world, world.keys["desk"]) as sse:
        world.runtime.hub.close()
        await sse.wait_for(lambda: not sse.more_body)


@pytest.mark.parametrize(
    ("key", "query", "status"),
    [("shipper", "shipper=acme", 404), ("shipper", "types=meteor", 422), (None, "", 401)],
)
async def test_refusals_are_plain_json(
    world: World, key: str | None, query: str, status: int
) -> None:
    headers = world.auth(key) if key else {}
    r = await world.client.get(f"/v1/live?{query}", headers=headers)
    assert r.status_code == status
    assert "error" in r.json()


# -- tenancy by trip on a shared device --------------------------------------------------------

MIN = 60_000
SHARED_GPS, SHARED_LOCK, PG_GPS = "shared-gps-5", "shared-lock-5", "pg-own-gps-5"
ACME_LAT = 30.25  # the fixes of acme's trip are recognisable by their latitude
ACME_START = T0 + 3 * 60 * MIN
PG_START = ACME_START + 60 * MIN


def _position(device: str, ts: int, lat: float, lon: float) -> RawMessage:
    body = {"ts": ts, "lat": lat, "lon": lon, "speed_kmh": 30.0, "seq": ts // 1000}
    return RawMessage(f"devices/{device}/position", json.dumps(body).encode(), ts)


def _lock(device: str, ts: int, event: str) -> RawMessage:
    body = {"ts": ts, "event": event, "lat": ACME_LAT, "lon": 121.2, "seq": ts // 1000}
    return RawMessage(f"devices/{device}/lock", json.dumps(body).encode(), ts)


async def _shared_devices_world(world: World) -> None:
    """A GPS and a lock ride on acme's trip (active, then completed), then on pg's trip,
    which pg's own GPS has activated; the shared units have not been heard since acme's."""
    admin = world.auth("admin")
    rt, clock = world.runtime, world.clock
    for device, kind in ((SHARED_GPS, "gps"), (SHARED_LOCK, "lock"), (PG_GPS, "gps")):
        r = await world.client.post(
            "/v1/devices", json={"device_id": device, "kind": kind}, headers=admin
        )
        assert r.status_code in (200, 201), r.text

    async def plan(trip_id: str, shipper: str, devices: list[str], start: int) -> None:
        doc = trip_doc(trip_id, shipper, devices, planned_start=iso(start))
        r = await world.client.post("/v1/trips", json=doc, headers=admin)
        assert r.status_code == 201, r.text

    await plan("ACME-LIVE-1", OTHER, [SHARED_GPS, SHARED_LOCK], ACME_START)
    clock.set(ACME_START + MIN)
    rt.pipeline.process([_position(SHARED_GPS, ACME_START + MIN, 31.45, 121.10)])
    assert rt.engine.trip_state("ACME-LIVE-1")["status"] == "active"
    clock.set(ACME_START + 30 * MIN)
    r = await world.client.post("/v1/trips/ACME-LIVE-1/complete", json={}, headers=admin)
    assert r.status_code == 200, r.text
    await plan("PG-LIVE-1", OWN, [SHARED_GPS, SHARED_LOCK, PG_GPS], PG_START)
    clock.set(PG_START + MIN)
    rt.pipeline.process([_position(PG_GPS, PG_START + MIN, 31.45, 121.10)])
    assert rt.engine.trip_state("PG-LIVE-1")["status"] == "active"


async def test_shared_device_positions_go_to_the_trip_of_their_time(world: World) -> None:
    """The probe of issue 15 on the live feed: the shared units come back online with a
    backlog of acme's trip (fixes and a forced_open); the engine hands them to the device's
    current trip, pg's. Neither pg's stream nor the desk's shows them as pg's positions, and
    acme's stream carries nothing of pg's trip; pg's own positions still arrive."""
    await _shared_devices_world(world)
    rt, clock = world.runtime, world.clock
    async with (
        SseReader(world, world.keys["shipper"]) as pg,
        SseReader(world, world.keys["other_shipper"]) as acme,
        SseReader(world, world.keys["desk"]) as desk,
    ):
        clock.set(PG_START + 2 * MIN)
        backlog = [
            _position(SHARED_GPS, ACME_START + (2 + i) * MIN, ACME_LAT, 121.2 + i * 1e-3)
            for i in range(5)
        ]
        rt.pipeline.process([*backlog, _lock(SHARED_LOCK, ACME_START + 10 * MIN, "forced_open")])
        clock.set(PG_START + 3 * MIN)
        rt.pipeline.process(
            [
                _position(PG_GPS, PG_START + 3 * MIN, 31.44, 121.11),
                _position(SHARED_GPS, PG_START + 3 * MIN, 31.44, 121.11),
            ]
        )
        last = iso(PG_START + 3 * MIN)

        def arrived(sse: SseReader) -> bool:
            devices = {d["device_id"] for _, d in sse.events() if d.get("ts") == last}
            return devices == {PG_GPS, SHARED_GPS}

        await pg.wait_for(lambda: arrived(pg))
        await desk.wait_for(lambda: arrived(desk))
    for sse in (pg, desk):
        positions = [d for e, d in sse.events() if e == "position"]
        assert positions and all(d["trip_id"] == "PG-LIVE-1" for d in positions)
        assert all(d["ts"] >= iso(PG_START) for d in positions), positions
        assert str(ACME_LAT) not in sse.buffer.decode()
        assert "forced_open" not in sse.buffer.decode()
    assert "PG-LIVE-1" not in acme.buffer.decode() and OWN not in acme.buffer.decode()
    assert acme.events() == []


async def test_a_position_of_an_unknown_trip_is_not_streamed(world: World) -> None:
    # the span of a trip the store does not know cannot be checked: nothing is shown
    async with SseReader(world, world.keys["desk"]) as desk:
        event = {"device_id": "d", "trip_id": "NO-SUCH-TRIP", "ts": iso(T0), "lat": 1.0}
        world.runtime.hub.publish({"type": "position", "shipper": OWN, "data": event})
        own = world.tenants[OWN].trip_id
        world.runtime.hub.publish(
            {"type": "position", "shipper": OWN, "data": {**event, "trip_id": own}}
        )
        await desk.wait_for(lambda: bool(desk.events()))
    assert [d["trip_id"] for _, d in desk.events()] == [own]


class _CountingStore:
    """The world's real store, counting trip reads."""

    def __init__(self, store: Any) -> None:
        self.store, self.reads = store, 0

    def get_trip(self, trip_id: str) -> Any:
        self.reads += 1
        return self.store.get_trip(trip_id)

    def trip_events(self, trip_id: str) -> Any:
        return self.store.trip_events(trip_id)


async def test_trip_spans_are_read_once_and_kept(world: World) -> None:
    from api.routers.live import TripSpans

    now = [0.0]
    store = _CountingStore(world.runtime.store)
    spans = TripSpans(store, settled_s=300, unsettled_s=2, clock=lambda: now[0])  # type: ignore[arg-type]
    trip_id = world.tenants[OWN].trip_id  # planned: its start may still move
    first = await asyncio.gather(*(spans.span(trip_id) for _ in range(5)))
    assert store.reads == 1 and len(set(first)) == 1 and first[0] is not None
    assert first[0][0] == T0 - 8 * 60 * MIN  # its planned start (08:00+08:00)
    now[0] = 1.0
    assert await spans.span(trip_id) == first[0] and store.reads == 1
    now[0] = 2.5  # a planned trip is read again after unsettled_s
    await spans.span(trip_id)
    assert store.reads == 2
    assert await spans.span("NO-SUCH-TRIP") is None and store.reads == 3
