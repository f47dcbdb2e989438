"""The private services the suite relies on really run (TimescaleDB, PostGIS, Mosquitto)."""

import asyncio
import socket
from pathlib import Path

import aiomqtt
import psycopg

from tests.services import NatsCluster


def test_timescaledb_and_postgis_available(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute("CREATE TABLE t (ts timestamptz NOT NULL, v int)")
        conn.execute("SELECT create_hypertable('t', 'ts')")
        (d,) = conn.execute(
            "SELECT ST_Distance('POINT(0 0)'::geography, 'POINT(0 1)'::geography)"
        ).fetchone()
        assert 110_000 < d < 111_000


async def test_mosquitto_round_trip(mqtt_url: str) -> None:
    port = int(mqtt_url.rsplit(":", 1)[1])
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("probe/#", qos=1)
        await client.publish("probe/x", b"hello", qos=1)
        async with asyncio.timeout(5):
            async for msg in client.messages:
                assert msg.payload == b"hello"
                break


def test_a_nats_cluster_starts_again_on_new_ports_when_one_was_taken(tmp_path: Path) -> None:
    """A port picked as free and taken before its node binds it (another connection's
    ephemeral port) makes the node exit; the cluster then starts on fresh ports."""
    cluster = NatsCluster(tmp_path, size=3, partitions=2)
    taken = cluster.mqtt_ports[1]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with cluster:
            assert taken not in cluster.mqtt_ports
            assert all(p is not None and p.poll() is None for p in cluster.procs)
