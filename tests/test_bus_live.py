"""The live feed across processes (``busmode.live``): a round's events relayed over a real
nats-server reach a subscriber of another hub in order, even when together they exceed the
server's max_payload (split into several messages)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import nats
import orjson
import pytest

from alerts import LiveHub
from cargowatch.busmode.live import LiveRelay, _encoded
from tests.nats_service import NatsServer


def _positions(n: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "position",
            "shipper": "pg",
            "data": {"device_id": f"gps-{i}", "trip_id": f"T{i // 15}", "lat": 31.4, "i": i},
        }
        for i in range(n)
    ]


def test_events_are_split_to_fit_and_keep_their_order() -> None:
    events = _positions(5000)
    chunks = _encoded(events, 64 * 1024)
    assert len(chunks) > 1 and all(len(c) <= 64 * 1024 for c in chunks)
    assert [e for c in chunks for e in orjson.loads(c)] == events
    assert _encoded(events[:3], 64 * 1024) == [orjson.dumps(events[:3])]
    assert _encoded([{"big": "x" * 100}], 50) == []  # one event too large: dropped


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats"), partitions=2) as srv:
        yield srv


async def test_a_round_larger_than_max_payload_reaches_the_other_process(
    server: NatsServer,
) -> None:
    worker_nc = await nats.connect(server.url)
    serve_nc = await nats.connect(server.url)
    worker_hub, serve_hub = LiveHub(), LiveHub()
    worker = LiveRelay(worker_hub, worker_nc, receive=False)
    serve = LiveRelay(serve_hub, serve_nc, receive=True)
    await worker.start()
    await serve.start()
    sub = serve_hub.subscribe(maxsize=100_000)
    events = _positions(12_000)
    assert len(orjson.dumps(events)) > worker_nc.max_payload  # one message would be refused
    try:
        worker_hub.publish_many(events)
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(got) < len(events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            got.extend(sub.drain())
        assert got == events
        assert worker.sent > 1
    finally:
        sub.close()
        await worker.stop()
        await serve.stop()
        await worker_nc.close()
        await serve_nc.close()
