"""The partition consumer and the re-key stage, against a real nats-server: acknowledged after
the handler returns, redelivered in order after a failure, left for the next owner when stopped
mid-batch; the re-key is idempotent and keeps a trip's devices together."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import nats
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from telemetry.bus.consumer import BusMessage, PartitionConsumer
from telemetry.bus.partitions import partition_of, trip_partition
from telemetry.bus.rekey import Rekeyed, Rekeyer, rekey_handler
from telemetry.bus.streams import StreamLimits, ensure_streams
from tests.nats_service import NatsServer

P = 4
SMALL = StreamLimits(max_age_s=3600, max_bytes=1 << 30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats"), partitions=P) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="function")
async def js(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    # clean streams per test
    for name in await js.streams_info():
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(str(name.config.name))
    await ensure_streams(js, SMALL, SMALL)
    try:
        yield js
    finally:
        await nc.close()


def _device_in(partition: int, prefix: str = "dev") -> str:
    return next(
        f"{prefix}-{i}" for i in range(1000) if partition_of(f"{prefix}-{i}", P) == partition
    )


async def _publish(js: JetStreamContext, device: str, n: int, kind: str = "position") -> None:
    """As the device's MQTT messages arrive: on devices.{id}.{kind}, mapped by the server."""
    for i in range(n):
        ack = await js.publish(f"devices.{device}.{kind}", f'{{"i": {i}}}'.encode())
        assert ack.stream == f"DEVICES_{partition_of(device, P)}"  # the device's partition


async def _messages(js: JetStreamContext, family: str) -> int:
    """Messages in all of a family's partition streams."""
    return sum(
        i.state.messages
        for i in await js.streams_info()
        if str(i.config.name).startswith(f"{family}_")
    )


async def _until(cond: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_ack_after_handler_success(js: JetStreamContext) -> None:
    device = _device_in(1)
    await _publish(js, device, 250)
    got: list[BusMessage] = []

    async def handler(batch: Sequence[BusMessage]) -> None:
        got.extend(batch)

    c = PartitionConsumer(js, "DEVICES", "part", 1, handler, batch=100)
    await c.start()
    await _until(lambda: c.handled == 250)
    await c.stop()
    assert [m.data for m in got] == [f'{{"i": {i}}}'.encode() for i in range(250)]
    assert {(m.device_id, m.kind, m.delivered) for m in got} == {(device, "position", 1)}
    assert [m.stream_seq for m in got] == list(range(1, 251))
    assert all(m.timestamp_ns > 0 for m in got)
    info = await js.consumer_info("DEVICES_1", "p1")
    assert (info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq) == (0, 0, 250)
    # the next owner of the partition resumes after the acknowledgement: nothing again
    again: list[BusMessage] = []

    async def record(batch: Sequence[BusMessage]) -> None:
        again.extend(batch)

    c2 = PartitionConsumer(js, "DEVICES", "part", 1, record)
    await c2.start()
    await _publish(js, device, 1)
    await _until(lambda: c2.handled == 1)
    await c2.stop()
    assert [m.stream_seq for m in again] == [251]


async def test_a_stray_message_on_the_inbox_is_ignored(js: JetStreamContext) -> None:
    """A message on the consumer's inbox that is no JetStream delivery (its reply is not an
    acknowledgement subject) is logged and dropped; reading and the connection go on."""
    device = _device_in(3)
    got: list[BusMessage] = []

    async def handler(batch: Sequence[BusMessage]) -> None:
        got.extend(batch)

    c = PartitionConsumer(js, "DEVICES", "part", 3, handler, batch=10)
    await c.start()
    nc = js._nc
    await nc.publish(c._inbox, b"stray", reply="not.an.ack")
    await nc.publish(c._inbox, b"stray too")
    await _publish(js, device, 5)
    await _until(lambda: c.handled == 5)
    await c.stop()
    assert nc.is_connected
    assert [m.data for m in got] == [f'{{"i": {i}}}'.encode() for i in range(5)]


async def test_redelivered_in_order_after_handler_failure(js: JetStreamContext) -> None:
    device = _device_in(2)
    await _publish(js, device, 30)
    calls: list[list[int]] = []

    async def flaky(batch: Sequence[BusMessage]) -> None:
        calls.append([m.stream_seq for m in batch])
        if len(calls) == 1:
            raise RuntimeError("store down")

    # linger: the first batch is all of the first ten messages however they trickle in (a
    # busy machine delivered one alone once)
    c = PartitionConsumer(
        js, "DEVICES", "part", 2, flaky, batch=10, retry_delay_s=0.1, linger_s=0.5
    )
    await c.start()
    await _until(lambda: c.handled == 30)
    await c.stop()
    assert c.failures == 1
    assert calls[0] == calls[1] == list(range(1, 11))  # the failed batch again, first
    assert [s for call in calls[1:] for s in call] == list(range(1, 31))
    info = await js.consumer_info("DEVICES_2", "p2")
    assert (info.num_ack_pending, info.ack_floor.stream_seq) == (0, 30)


async def test_stop_mid_batch_leaves_it_to_the_next_owner(js: JetStreamContext) -> None:
    device = _device_in(3)
    await _publish(js, device, 5)
    started = asyncio.Event()

    async def stuck(batch: Sequence[BusMessage]) -> None:
        started.set()
        await asyncio.sleep(60)

    c = PartitionConsumer(js, "DEVICES", "part", 3, stuck, grace_s=0.2)
    await c.start()
    await asyncio.wait_for(started.wait(), 10)
    t0 = time.monotonic()
    await c.stop()
    assert time.monotonic() - t0 < 1.0 and not c.running and c.handled == 0
    info = await js.consumer_info("DEVICES_3", "p3")
    assert info.ack_floor.stream_seq == 0  # nothing acknowledged
    got: list[BusMessage] = []

    async def record(batch: Sequence[BusMessage]) -> None:
        got.extend(batch)

    # the next owner gets the abandoned batch at once (nak'ed), not after AckWait
    c2 = PartitionConsumer(js, "DEVICES", "part", 3, record)
    t0 = time.monotonic()
    await c2.start()
    await _until(lambda: c2.handled == 5, 5)
    await c2.stop()
    assert time.monotonic() - t0 < 5
    assert [(m.stream_seq, m.delivered) for m in got] == [(i, 2) for i in range(1, 6)]


async def test_wrong_topic_shape_reaches_partition_zero(js: JetStreamContext) -> None:
    await js.publish("devices.x.position.extra", b"{}")
    got: list[BusMessage] = []

    async def record(batch: Sequence[BusMessage]) -> None:
        got.extend(batch)

    c = PartitionConsumer(js, "DEVICES", "part", 0, record)
    await c.start()
    await _until(lambda: c.handled == 1)
    await c.stop()
    assert (got[0].device_id, got[0].topic) == (None, "devices/x/position/extra")


def _items(device: str, trip: str | None, n: int, kind: str = "position") -> list[Rekeyed]:
    return [
        Rekeyed(device, kind, 1_795_334_400_000 + i * 1000, i, trip, f'{{"i": {i}}}'.encode())
        for i in range(n)
    ]


async def test_rekey_is_idempotent(js: JetStreamContext) -> None:
    rekeyer = Rekeyer(js, P)
    items = _items("gps.1:a", "PG-1", 20) + _items("lock-1", "PG-1", 5, "lock")
    first = await rekeyer.publish(items)
    second = await rekeyer.publish(items)  # a redelivered input, re-keyed again
    assert not any(a.duplicate for a in first) and all(a.duplicate for a in second)
    m = trip_partition("PG-1", P)
    assert await _messages(js, "TRIPS") == 25
    last = await js.get_last_msg(f"TRIPS_{m}", f"trip.{m}.gps//1:a.position")
    assert last.data == b'{"i": 19}' and last.headers and last.headers["Cw-Trip"] == "PG-1"
    # the same device and ts without seq, and with another seq, are different messages
    other = [Rekeyed("lock-1", "lock", items[20].ts, None, "PG-1", b"x")]
    assert not (await rekeyer.publish(other))[0].duplicate


async def test_rekey_keeps_a_trip_together_and_survives_redelivery(
    js: JetStreamContext,
) -> None:
    gps, lock = _device_in(0, "gps"), _device_in(1, "lock")  # different device partitions
    trips = {gps: "PG-7", lock: "PG-7"}
    await _publish(js, gps, 40)
    await _publish(js, lock, 10, "lock")
    rekeyer = Rekeyer(js, P)
    failed: list[int] = []

    async def validate(batch: Sequence[BusMessage]) -> list[Rekeyed]:
        items = [
            Rekeyed(
                m.device_id or "",
                m.kind or "",
                m.stream_seq,
                None,
                trips[m.device_id or ""],
                m.data,
            )
            for m in batch
        ]
        if not failed:  # the first batch is re-keyed, then its commit fails: redelivered
            await rekeyer.publish(items)
            failed.append(len(items))
            raise RuntimeError("crash after re-key, before ack")
        return items

    handler = rekey_handler(validate, rekeyer)
    consumers = [
        PartitionConsumer(js, "DEVICES", "part", n, handler, batch=16, retry_delay_s=0.1)
        for n in (0, 1)
    ]
    for c in consumers:
        await c.start()
    await _until(lambda: sum(c.handled for c in consumers) == 50)
    for c in consumers:
        await c.stop()
    assert failed and rekeyer.duplicates >= failed[0]
    m = trip_partition("PG-7", P)
    info = await js.stream_info(f"TRIPS_{m}")
    assert info.state.messages == 50  # each device message once, all in the trip's partition
    assert await _messages(js, "TRIPS") == 50


@pytest.mark.parametrize("grid", [True, False])
async def test_grid_consumers_hand_over_on_one_beat(js: JetStreamContext, grid: bool) -> None:
    """With ``linger_grid`` the consumers of a process hand their batches over on the same
    beat (a multiple of ``linger_s``), however far apart within it their first messages came;
    without it, each a linger after its own first message."""
    linger = 0.3
    loop = asyncio.get_running_loop()
    handed: dict[int, float] = {}

    def recorder(n: int):
        async def handle(batch: Sequence[BusMessage]) -> None:
            handed.setdefault(n, loop.time())

        return handle

    consumers = [
        PartitionConsumer(js, "DEVICES", "part", n, recorder(n), linger_s=linger, linger_grid=grid)
        for n in (0, 1)
    ]
    for c in consumers:
        await c.start()
    # just after a beat: both first messages fall within the next one, 0.1 s apart
    await asyncio.sleep(linger - loop.time() % linger + 0.01)
    beat = (loop.time() // linger + 1) * linger
    await _publish(js, _device_in(0), 1)
    await asyncio.sleep(0.1)
    await _publish(js, _device_in(1), 1)
    await _until(lambda: len(handed) == 2)
    for c in consumers:
        await c.stop()
    gap = abs(handed[1] - handed[0])
    if grid:
        assert gap < 0.05 and min(handed.values()) >= beat - 0.001
    else:
        assert gap > 0.07
