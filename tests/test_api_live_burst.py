"""The live stream sends a burst of buffered events as one write, in order — also when a
position in the middle of the burst must first have its trip's span read from the store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alerts import LiveHub
from alerts.render import iso
from api.routers.live import TripSpans, _OwnPositions
from api.sse import event_stream
from telemetry.store import open_store

T0 = 1_795_334_400_000


def position(trip: str, ts: int) -> dict[str, Any]:
    data = {"device_id": "gps-1", "trip_id": trip, "ts": iso(ts), "lat": 31.0, "lon": 121.0}
    return {"type": "position", "shipper": "acme", "data": data}


def alarm(n: int) -> dict[str, Any]:
    return {"type": "alarm.raised", "shipper": "acme", "data": {"alarm_id": f"a{n}"}}


def test_a_burst_is_one_write_in_order_and_positions_keep_their_span(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.put_trip(
        {
            "trip_id": "T",
            "shipper": "acme",
            "devices": ["gps-1"],
            "status": "active",
            "planned_start": T0,
            "activated_at": T0,
        }
    )

    async def main() -> list[bytes]:
        hub = LiveHub()
        own = _OwnPositions(hub.subscribe(), TripSpans(store), lambda e: True)
        stop = asyncio.Event()
        stream = event_stream(own, heartbeat_s=5.0, stop=stop, accept=lambda e: True)
        assert await anext(stream) == b"retry: 3000\n\n"
        # T's span is not read yet: the first position waits for it, what follows keeps
        # its place; the one before T's activation is not T's and is left out
        hub.publish_many(
            [
                alarm(1),
                position("T", T0 + 1000),
                alarm(2),
                position("T", T0 - 60_000),
                position("T", T0 + 2000),
                alarm(3),
            ]
        )
        writes = [await anext(stream), await anext(stream)]
        hub.publish_many([alarm(4), position("T", T0 + 3000), alarm(5)])  # span known now
        writes.append(await anext(stream))
        stop.set()
        await stream.aclose()
        return writes

    writes = asyncio.run(main())
    frames = [w.split(b"\n\n")[:-1] for w in writes]
    kinds = [[f.split(b"\n")[0].removeprefix(b"event: ").decode() for f in w] for w in frames]
    assert kinds == [
        ["alarm.raised"],  # then the stream awaits T's span
        ["position", "alarm.raised", "position", "alarm.raised"],
        ["alarm.raised", "position", "alarm.raised"],  # one burst, one write
    ]
    flat = b"".join(writes)
    assert flat.index(b'"a1"') < flat.index(b'"a2"') < flat.index(b'"a3"') < flat.index(b'"a4"')
    assert iso(T0 - 60_000).encode() not in flat
    store.close()
