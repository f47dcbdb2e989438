"""Bus mode on a 3-node NATS cluster configured by ``cargowatch broker-config nats --cluster``:
the streams get 3 replicas from ``CARGOWATCH_BUS_REPLICAS``, a device publishes over MQTT to
one node, another node is killed with SIGKILL, and every acknowledged fix — before and after
the kill — is in the DEVICES stream (two of three nodes are a quorum). bench/cluster.py
measures the harder case, the stream leader's death (docs/scaling.md, "A NATS cluster")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from cargowatch.settings import load_settings
from cargowatch.worker import stream_limits
from telemetry.bus.partitions import partition_of
from telemetry.bus.streams import DEVICE_STREAM, GIB, StreamLimits, ensure_streams, stream_name
from tests.bus_support import PASSWORD, Device, fix, wait_for
from tests.nats_service import NatsServer
from tests.services import NatsCluster

GPS = "gps.cluster:1"
N = 20
P = 4
STREAM = stream_name(DEVICE_STREAM, partition_of(GPS, P))  # the GPS unit's partition's stream


async def _info(url: str) -> Any:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        return await nc.jetstream(timeout=2).stream_info(STREAM)
    finally:
        await nc.close()


def info(url: str) -> Any:
    """The stream's info, asked again while the cluster elects leaders after a kill."""
    for _ in range(10):
        try:
            return asyncio.run(_info(url))
        except nats.errors.TimeoutError:
            continue
    return asyncio.run(_info(url))


async def _stored(url: str) -> list[int]:
    """The ``seq`` of every message in the stream, in stream order (read by sequence from the
    stream's leader: no consumer, which would need the cluster's meta leader)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=5)
        state = (await js.stream_info(STREAM)).state
        out = []
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(STREAM, seq)
            assert msg.data is not None
            out.append(orjson.loads(msg.data)["seq"])
        return out
    finally:
        await nc.close()


def test_a_node_dies_and_every_acknowledged_fix_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NatsCluster(tmp_path, size=3, partitions=P, devices={GPS: PASSWORD}) as cluster:
        monkeypatch.setenv("CARGOWATCH_BUS_REPLICAS", "3")
        settings = load_settings(bus_url=cluster.url, bus_devices_gib=1, bus_trips_gib=1)
        assert settings.bus_replicas == 3

        async def create() -> None:
            nc = await nats.connect(cluster.url)
            try:
                limits = stream_limits(settings)
                await ensure_streams(nc.jetstream(timeout=10), *limits, settings.bus_replicas)
            finally:
                await nc.close()

        asyncio.run(create())
        wait_for(lambda: info(cluster.url).cluster.leader is not None, 20, "a stream leader")
        stream = info(cluster.url)
        assert stream.config.num_replicas == 3
        assert len(stream.cluster.replicas) == 2  # besides the leader
        leader = cluster.names.index(stream.cluster.leader)
        via, victim = [i for i in range(3) if i != leader]

        device = Device(GPS, cluster.mqtt_ports[via]).connect()
        try:
            device.publish("position", [fix(1_000 * i, 121.1, 31.45, i) for i in range(N)])
            cluster.kill(victim)
            # Every fix published after the kill is acknowledged, though perhaps late: when the
            # dead node led a JetStream group the node needs, the node closes the connection
            # after 5 s without a JetStream ack and paho reconnects (CONNACK after the election)
            # and sends again.
            assert device.client is not None
            topic = f"devices/{GPS}/position"
            infos = [
                device.client.publish(topic, fix(1_000 * i, 121.1, 31.45, i), qos=1)
                for i in range(N, 2 * N)
            ]
            for sent in infos:
                sent.wait_for_publish(40)
                assert sent.is_published()
        finally:
            device.close()
        url = cluster.urls()[via]
        wait_for(lambda: info(url).state.messages >= 2 * N, 20, "every fix stored")
        stored = asyncio.run(_stored(url))
        # At least once: when the kill stalls the node's PUBACKs (its MQTT session state was
        # led by the dead node), paho reconnects and sends the unacknowledged fixes again,
        # which the stream then holds twice (the engine stores a fix once).
        assert set(stored) == set(range(2 * N))
        assert stored[: 2 * N] == list(range(2 * N))
        after = info(url)
        assert after.cluster.leader == cluster.names[leader]
        gone = [p for p in after.cluster.replicas if p.name == cluster.names[victim]]
        assert gone and not gone[0].current


def test_replicas_on_a_single_server_is_a_clear_error(tmp_path: Path) -> None:
    limits = StreamLimits(3600.0, GIB)

    async def create(url: str) -> None:
        nc = await nats.connect(url)
        try:
            await ensure_streams(nc.jetstream(), limits, limits, replicas=3)
        finally:
            await nc.close()

    with (
        NatsServer(tmp_path) as server,
        pytest.raises(nats.js.errors.APIError, match="need a NATS cluster of at least 3"),
    ):
        asyncio.run(create(server.url))
