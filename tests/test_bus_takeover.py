"""A worker killed with ``kill -9`` leaves messages delivered to it and never acknowledged.
The next owner of the partition must see them — first, in order — and not acknowledge them
unseen with the AckAll of newer messages (they would come back only after AckWait, 30 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import nats

from telemetry.bus.consumer import BusMessage, PartitionConsumer, consumer_config
from telemetry.bus.streams import StreamLimits, ensure_streams
from tests.nats_service import NatsServer

SMALL = StreamLimits(max_age_s=3600, max_bytes=1 << 30)


async def test_messages_left_by_a_dead_owner_come_first_and_none_is_lost(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", partitions=4) as srv:
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            await ensure_streams(js, SMALL, SMALL)
            for i in range(10):
                await js.publish("trip.2.dev-a.position", str(i).encode())
            # the dead owner: pulled 6, acknowledged the first 2 (AckAll), then vanished
            await js.add_consumer("TRIPS_2", consumer_config("p2", (), batch=100))
            sub = await js.pull_subscribe_bind("p2", "TRIPS_2")
            held = await sub.fetch(6, timeout=2)
            await held[1].ack_sync()
            await sub.unsubscribe()
            for i in range(10, 15):  # published while the partition changes hands
                await js.publish("trip.2.dev-a.position", str(i).encode())
            got: list[int] = []

            async def record(batch: Sequence[BusMessage]) -> None:
                got.extend(int(m.data) for m in batch)

            c = PartitionConsumer(js, "TRIPS", "trip", 2, record, fetch_timeout_s=0.3)
            t0 = time.monotonic()
            await c.start()
            while len(got) < 13 and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            await c.stop()
            assert got == list(range(2, 15)), got  # in order, none lost, not after AckWait
            assert time.monotonic() - t0 < 10
            info = await js.consumer_info("TRIPS_2", "p2")
            assert info.num_ack_pending == 0 and info.num_pending == 0
        finally:
            await nc.close()
