"""The private services the suite relies on really run (TimescaleDB, PostGIS, Mosquitto)."""

import asyncio

import aiomqtt
import psycopg


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
