"""The MQTT connection's own reader: PUBLISH packets decoded from whatever pieces the socket
returns, reading paused and resumed mid-buffer, and MQTT 3.1.1 acknowledged on receipt (on the
real private Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

from telemetry.ingest import MqttIngest, RawBatch
from telemetry.mqtt import MqttConnection
from tests.services import publish


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish_packet(topic: str, payload: bytes, mid: int, qos: int, props: bytes = b"") -> bytes:
    t = topic.encode()
    var = len(t).to_bytes(2, "big") + t + (mid.to_bytes(2, "big") if qos else b"")
    var += _varint(len(props)) + props  # MQTT 5: the properties' length, then the properties
    return bytes([0x30 | qos << 1]) + _varint(len(var) + len(payload)) + var + payload


def _connection(got: list[tuple[str, bytes, int, int]], room: list[bool]) -> MqttConnection:
    conn = MqttConnection(
        "127.0.0.1",
        1,
        "t-decode",
        on_message=lambda _c, topic, payload, mid, qos: got.append((topic, payload, mid, qos)),
        room=lambda: room[0],
    )
    conn._connack.set_result(0)
    conn.reading = True  # as if the socket were in the selector
    return conn


async def test_packets_are_decoded_from_pieces_split_anywhere() -> None:
    want = [
        ("devices/gps-1/position", b'{"ts": 1}', 1, 1, b""),
        ("devices/lock-é/lock", b"x" * 200, 2, 1, b"\x01\x01"),  # 2-byte length, a property
        ("devices/gps-2/position", b"y" * 20_000, 0, 0, b""),  # 3-byte length, QoS 0
        ("devices/gps-3/position", b"", 65_535, 1, b"\x26\x00\x01k\x00\x01v"),  # user property
    ]
    stream = b"".join(_publish_packet(t, p, m, q, props) for t, p, m, q, props in want) * 3
    rng = random.Random(7)
    for _ in range(20):
        got: list[tuple[str, bytes, int, int]] = []
        conn = _connection(got, [True])
        at = 0
        while at < len(stream):
            step = rng.choice([1, 2, 3, 7, 100, 5_000, 40_000])
            conn._inbuf += stream[at : at + step]
            at += step
            conn._decode()
        assert got == [(t, p, m, q) for t, p, m, q, _ in want] * 3
        assert conn._inbuf == b""


async def test_without_room_decoding_stops_and_the_rest_waits_in_the_buffer() -> None:
    got: list[tuple[str, bytes, int, int]] = []
    room = [True]
    conn = _connection(got, room)
    a, b = socket.socketpair()  # a descriptor for pause_reading to take out of the selector
    conn._fd = a.fileno()
    stream = b"".join(_publish_packet("devices/d/position", b"%d" % i, i + 1, 1) for i in range(10))
    conn._inbuf = stream

    def on_message(_c: MqttConnection, topic: str, payload: bytes, mid: int, qos: int) -> None:
        got.append((topic, payload, mid, qos))
        room[0] = len(got) != 4  # the owner is full after the fourth message

    conn._on_message_cb = on_message
    conn._decode()
    assert [m for _, _, m, _ in got] == [1, 2, 3, 4]
    assert not conn.reading  # paused: nothing more is read or decoded
    room[0] = True
    conn.reading = True
    conn._decode()  # what resume_reading schedules
    assert [m for _, _, m, _ in got] == list(range(1, 11))
    assert conn._inbuf == b""
    a.close()
    b.close()


async def _collect(queue: asyncio.Queue[RawBatch], n: int, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while len(got) < n:
                got.extend(m.payload for m in (await queue.get()).messages)
    return got


async def test_mqtt_311_acknowledges_on_receipt(mqtt_url: str) -> None:
    queue: asyncio.Queue[RawBatch] = asyncio.Queue()
    items = [("devices/d1/position", b'{"i": %d}' % i) for i in range(300)]

    async def session() -> asyncio.Task[None]:
        ingest = MqttIngest(mqtt_url, queue, client_id="t-311", protocol="3.1.1", batch_ms=10)
        task = asyncio.create_task(ingest.run())
        async with asyncio.timeout(10):
            while not ingest.connected:
                await asyncio.sleep(0.02)
        return task

    task = await session()
    await asyncio.sleep(0.3)  # the SUBSCRIBE is in
    await asyncio.to_thread(publish, mqtt_url, items)
    got = await _collect(queue, len(items), 10)
    assert sorted(got) == sorted(p for _, p in items)
    await asyncio.sleep(0.3)  # the PUBACKs leave
    task.cancel()  # the batches are never acknowledged: 3.1.1 acknowledged them on receipt
    with contextlib.suppress(asyncio.CancelledError):
        await task
    task = await session()
    again = await _collect(queue, 1, 1.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert again == []  # nothing redelivered
