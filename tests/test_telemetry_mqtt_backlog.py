"""The MQTT ingest behind a backlog, on the real private Mosquitto: bounded hand-off with reading
paused, keepalive through a long pause, restart behind an unacknowledged backlog after
``kill -9``, broker restart with persistence, an unreachable broker, shutdown hand-over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from telemetry.ingest import MqttIngest, RawBatch
from tests.services import MosquittoServer, free_port, publish

ROOT = Path(__file__).resolve().parent.parent


def messages(n: int, start: int = 0, tag: str = "m") -> list[tuple[str, bytes]]:
    return [
        (f"devices/d{i % 97}/position", f'{{"{tag}": {i}, "pad": "{"x" * 120}"}}'.encode())
        for i in range(start, start + n)
    ]


# -- helpers ----------------------------------------------------------------------------------
async def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(ingest: MqttIngest, connect: bool = True) -> AsyncIterator[MqttIngest]:
    task = asyncio.create_task(ingest.run())
    try:
        if connect:
            await wait_for(lambda: ingest.connected or task.done(), 10)
        yield ingest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def drain(
    queue: asyncio.Queue[RawBatch], want: set[tuple[str, bytes]], timeout: float = 30
) -> list[tuple[str, bytes]]:
    """Take and acknowledge batches until every wanted message arrived; returns all received."""
    got: list[tuple[str, bytes]] = []
    missing = set(want)
    async with asyncio.timeout(timeout):
        while missing:
            batch = await queue.get()
            for m in batch.messages:
                got.append((m.topic, m.payload))
                missing.discard((m.topic, m.payload))
            batch.ack()
    return got


async def create_session(url: str, client_id: str) -> None:
    """Connect once so the broker keeps a persistent session with our subscriptions."""
    queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=1)
    async with running(MqttIngest(url, queue, client_id=client_id)):
        await asyncio.sleep(0.2)  # SUBACK read


# -- (a) bounded hand-off, reading paused, keepalive through the pause --------------------------
async def test_a_full_hand_off_pauses_reading_and_then_drains_every_message(mqtt_url: str) -> None:
    queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=4)
    ingest = MqttIngest(
        mqtt_url, queue, client_id="t-bounded", batch_max=500, batch_ms=20, keepalive_s=2
    )
    sent = messages(50_000)
    async with running(ingest):
        acked = await asyncio.to_thread(publish, mqtt_url, sent)
        assert acked == len(sent)
        await wait_for(lambda: ingest.state.paused)
        # Held through a pause of more than 1.5 keepalives: the broker would drop a silent
        # client after 3 s, paho's own keepalive a client whose PINGRESP stays unread.
        await asyncio.sleep(5)
        st = ingest.state
        assert st.capacity == 4 * 500
        assert st.held == st.received == st.capacity  # not one message more in the process
        assert st.paused and st.backlog
        assert st.problem is not None and st.problem.startswith("backlog")
        assert queue.qsize() == 4
        assert st.connects == 1 and st.connected
        got = await drain(queue, set(sent))
        assert st.connects == 1
    assert sorted(got) == sorted(sent)  # every message, once
    assert not ingest.state.paused


# -- (b) restart behind a large unacknowledged backlog, after kill -9 ---------------------------
CHILD = """
import asyncio, sys
from telemetry.ingest import MqttIngest

async def main() -> None:
    queue = asyncio.Queue(maxsize=2)  # never drained: nothing is ever acknowledged
    ingest = MqttIngest(sys.argv[1], queue, client_id=sys.argv[2], batch_max=1000)
    task = asyncio.create_task(ingest.run())
    while not ingest.connected:
        await asyncio.sleep(0.05)
    print("connected", flush=True)
    while not ingest.state.paused:
        await asyncio.sleep(0.05)
    print("paused", ingest.state.held, flush=True)
    await task

asyncio.run(main())
"""


def _spawn_child(url: str, client_id: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = textwrap.dedent(CHILD)
    return subprocess.Popen(
        [sys.executable, "-c", code, url, client_id], stdout=subprocess.PIPE, text=True, env=env
    )


async def test_b_a_new_ingest_connects_first_time_behind_a_killed_ones_backlog(
    mqtt_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client_id = "t-killed"
    await create_session(mqtt_url, client_id)
    child = _spawn_child(mqtt_url, client_id)
    try:
        assert child.stdout is not None
        assert (await asyncio.to_thread(child.stdout.readline)).startswith("connected")
        sent = messages(100_000, tag="k")
        assert await asyncio.to_thread(publish, mqtt_url, sent) == len(sent)
        line = await asyncio.to_thread(child.stdout.readline)
        assert line.startswith("paused"), line
        held = int(line.split()[1])
        assert held == 2 * 1000
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    caplog.set_level(logging.INFO, logger="telemetry")
    queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=8)
    ingest = MqttIngest(mqtt_url, queue, client_id=client_id, batch_max=5000)
    t0 = time.monotonic()
    async with running(ingest):
        assert time.monotonic() - t0 < 5
        got = await drain(queue, set(sent), timeout=40)
        assert ingest.state.connects == 1  # first try, no "connection lost" loop
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert set(got) == set(sent)
    assert len(got) - len(set(got)) <= held  # at most the killed one's unacked are repeated


# -- (c) a broker restart keeps what it acknowledged ---------------------------------------------
async def test_c_a_broker_restart_loses_no_acknowledged_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = MosquittoServer(tmp_path).start()
    try:
        queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=2)
        ingest = MqttIngest(broker.url, queue, client_id="t-restart", batch_max=500)
        before = messages(20_000, tag="before")
        async with running(ingest):
            # Received but not stored (the pipeline is "slow"), in flight, and queued.
            assert await asyncio.to_thread(publish, broker.url, before) == len(before)
            await wait_for(lambda: ingest.state.paused)
            await asyncio.to_thread(broker.restart)
            await wait_for(lambda: ingest.state.connects == 2)
            after = messages(100, tag="after")
            assert await asyncio.to_thread(publish, broker.url, after) == len(after)
            got = await drain(queue, set(before) | set(after))
        assert set(got) == set(before) | set(after)
        assert "connection to 127.0.0.1" in caplog.text and "lost" in caplog.text
    finally:
        broker.stop()


# -- (d) an unreachable broker -------------------------------------------------------------------
async def test_d_an_unreachable_broker_is_reported_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=1)
    ingest = MqttIngest(f"mqtt://127.0.0.1:{port}", queue, backoff_max_s=0.5)
    async with running(ingest, connect=False):
        await wait_for(lambda: caplog.text.count("cannot reach broker") >= 2, 10)
    st = ingest.state
    assert f"cannot reach broker at 127.0.0.1:{port} (" in caplog.text
    assert "retrying in" in caplog.text
    assert "lost" not in caplog.text
    assert not st.ever_connected and not st.connected
    assert st.last_error and "refused" in st.last_error.lower()
    assert st.problem is not None and st.problem.startswith("not connected")


# -- shutdown: stop reading, hand over, acknowledge what the pipeline stored ---------------------
async def test_shutdown_hands_over_what_was_received_and_acks_what_gets_stored(
    mqtt_url: str,
) -> None:
    client_id = "t-shutdown"
    queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=8)
    # A batch stays open for 30 s: at shutdown the messages are still in the hand-off.
    ingest = MqttIngest(mqtt_url, queue, client_id=client_id, batch_ms=30_000)
    sent = messages(300, tag="s")
    task = asyncio.create_task(ingest.run())
    await wait_for(lambda: ingest.connected)
    assert await asyncio.to_thread(publish, mqtt_url, sent) == len(sent)
    await wait_for(lambda: ingest.state.received == len(sent))
    assert queue.empty()
    task.cancel()
    batch = await asyncio.wait_for(queue.get(), 5)  # handed over on shutdown
    assert sorted((m.topic, m.payload) for m in batch.messages) == sorted(sent)
    assert not task.done()  # waits for the pipeline to store and acknowledge
    batch.ack()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    # Everything was acknowledged before DISCONNECT: the session has nothing to redeliver.
    again: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=8)
    async with running(MqttIngest(mqtt_url, again, client_id=client_id, batch_ms=20)):
        await asyncio.sleep(1.0)
    assert again.empty()
