"""Workers reading a partitioned stream through leases, against a real nats-server: a worker
joins and one leaves while messages flow; every message is handled exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import nats
import pytest

from telemetry.bus.consumer import BatchHandler, BusMessage
from telemetry.bus.leases import lease_bucket
from telemetry.bus.reader import PartitionedReader
from telemetry.bus.streams import StreamLimits, ensure_streams
from tests.nats_service import NatsServer

P = 4
SMALL = StreamLimits(max_age_s=3600, max_bytes=1 << 30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats"), partitions=P) as srv:
        yield srv


async def test_join_and_leave_while_reading(server: NatsServer) -> None:
    ncs = [await nats.connect(server.url) for _ in range(3)]
    try:
        js = ncs[0].jetstream()
        await ensure_streams(js, SMALL, SMALL)
        kv = await lease_bucket(js, ttl_s=6.0)
        seen: Counter[bytes] = Counter()
        by_partition: dict[int, list[str]] = {}

        def reader(i: int) -> PartitionedReader:
            async def handler_for(n: int) -> BatchHandler:
                async def handle(batch: Sequence[BusMessage]) -> None:
                    by_partition.setdefault(n, []).append(f"w{i}")
                    seen.update(m.data for m in batch)
                    await asyncio.sleep(0.01)

                return handle

            return PartitionedReader(
                ncs[i + 1].jetstream(),
                kv,
                f"w{i}",
                stream="DEVICES",
                prefix="part",
                partitions=P,
                handler_for=handler_for,
                ttl_s=6.0,
                consumer_options={"batch": 20},
            )

        async def publish(lo: int, hi: int) -> None:
            for k in range(lo, hi):
                await js.publish(f"devices.d-{k % 37}.position", str(k).encode())
                if k % 50 == 0:
                    await asyncio.sleep(0.05)

        a, b = reader(0), reader(1)
        a.start()
        # Messages before, while and after the second worker joins and the first leaves, so
        # that every partition is read by both whatever the timing.
        pub = asyncio.create_task(publish(0, 600))
        deadline = time.monotonic() + 10
        while len(a.owned) < P:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        b.start()  # joins: a hands over half
        deadline = time.monotonic() + 20
        while not (len(a.owned) == len(b.owned) == P // 2):
            assert time.monotonic() < deadline, (a.owned, b.owned)
            await asyncio.sleep(0.05)
        await pub
        await publish(600, 1100)  # both read
        await a.close()  # leaves: b takes everything
        deadline = time.monotonic() + 20
        while len(b.owned) < P:
            assert time.monotonic() < deadline, b.owned
            await asyncio.sleep(0.05)
        await publish(1100, 1500)
        deadline = time.monotonic() + 20
        while len(seen) < 1500:
            assert time.monotonic() < deadline, len(seen)
            await asyncio.sleep(0.05)
        await b.close()
        assert set(seen) == {str(k).encode() for k in range(1500)}
        assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1][:10]
        # partitions moved: each handed to b (at the join or when a left) was a's before
        assert all("w0" in v and "w1" in v for v in by_partition.values()), by_partition
    finally:
        for nc in ncs:
            with contextlib.suppress(Exception):
                await nc.close()
