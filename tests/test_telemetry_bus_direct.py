"""Deliveries routed straight to a sink (``telemetry.bus.direct``), against a real nats-server:
the sink gets what the client's callback would have (subject, reply, payload, headers), other
subscriptions keep the client's path, and a client of another shape is left alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from telemetry.bus.direct import direct_delivery, route, unroute
from tests.nats_service import NatsServer

Got = tuple[bytes, bytes, bytes, dict[str, str] | None]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats"), partitions=1) as srv:
        yield srv


@pytest_asyncio.fixture(loop_scope="function")
async def nc(server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(server.url)
    try:
        yield client
    finally:
        await client.close()


async def _until(cond: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_routed_subscription_reaches_the_sink_and_others_their_callback(
    nc: Client,
) -> None:
    direct: list[Got] = []
    queued: list[Msg] = []
    other: list[Msg] = []

    async def on_routed(msg: Msg) -> None:
        queued.append(msg)

    async def on_other(msg: Msg) -> None:
        other.append(msg)

    routed = await nc.subscribe("in.routed", cb=on_routed)
    await nc.subscribe("in.other", cb=on_other)
    assert route(nc, routed._id, lambda *a: direct.append(a))
    await nc.publish("in.routed", b"one", reply="ack.1")
    await nc.publish("in.routed", b"two", headers={"Nmqtt-Pub": "1"})
    await nc.publish("in.other", b"three")
    await _until(lambda: len(direct) == 2 and len(other) == 1)
    assert direct[0] == (b"in.routed", b"ack.1", b"one", None)
    assert direct[1][:3] == (b"in.routed", b"", b"two")
    assert direct[1][3] == {"Nmqtt-Pub": "1"}
    assert [m.data for m in other] == [b"three"] and queued == []
    # unrouted: the client's own path again
    unroute(nc, routed._id)
    await nc.publish("in.routed", b"four")
    await _until(lambda: len(queued) == 1)
    assert queued[0].data == b"four" and len(direct) == 2


async def test_a_failing_sink_does_not_stop_the_client(nc: Client) -> None:
    got: list[bytes] = []

    def sink(subject: bytes, reply: bytes, data: bytes, headers: object) -> None:
        if data == b"bad":
            raise ValueError("a bug in the sink")
        got.append(data)

    async def never(msg: Msg) -> None:
        raise AssertionError("routed")

    sub = await nc.subscribe("in.failing", cb=never)
    route(nc, sub._id, sink)
    for data in (b"bad", b"good"):
        await nc.publish("in.failing", data)
    await _until(lambda: got == [b"good"])
    assert nc.is_connected


async def test_installed_once_per_client(nc: Client) -> None:
    first = direct_delivery(nc)
    assert first is not None
    wrapped = nc._process_msg
    assert direct_delivery(nc) is first and nc._process_msg is wrapped


class OtherShape:
    """A client whose message path differs (another nats-py version)."""

    def _process_msg(self, sid: int, subject: bytes) -> None:
        raise AssertionError("never called")

    async def _process_headers(self, headers: bytes) -> None:
        return None


def test_a_client_of_another_shape_is_left_alone() -> None:
    client = OtherShape()
    method = client._process_msg
    assert direct_delivery(client) is None  # type: ignore[arg-type]
    assert not route(client, 1, lambda *a: None)  # type: ignore[arg-type]
    assert client._process_msg == method
