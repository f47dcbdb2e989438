"""Partition mapping, server configuration and device users, against a real nats-server."""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import paho.mqtt.client as paho
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from paho.mqtt.enums import CallbackAPIVersion

from telemetry.bus.config import write_nats_config
from telemetry.bus.consumer import PartitionConsumer
from telemetry.bus.partitions import (
    device_subject,
    fnv1a_32,
    parse_subject,
    partition_of,
    subject_token,
    trip_partition,
    trip_subject,
)
from telemetry.bus.streams import StreamLimits, discover_layout, ensure_streams
from tests.nats_service import NatsServer

P = 7  # not a power of two: a wrong modulo would show
SMALL = StreamLimits(max_age_s=3600, max_bytes=1 << 30)


def _ids(n: int) -> list[str]:
    rng = random.Random(16)
    alphabet = string.ascii_letters + string.digits + "_.:-"
    fixed = ["truck-12", "a.b", "gps:01", "x.y.z", "lock-0001", "a:b.c", "..", "Z_9", "1.2:3"]
    rest = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(n)]
    return list(dict.fromkeys(fixed + rest))


IDS = _ids(90)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = NatsServer(
        tmp_path_factory.mktemp("nats"), partitions=P, devices={i: f"pw-{i}" for i in IDS}
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def mqtt_session(
    port: int, user: str, password: str, publishes: list[tuple[str, bytes]] = ()
) -> int:
    """Connect (MQTT 3.1.1) as ``user``, publish QoS 1, disconnect; the CONNACK return code."""
    result: list[int] = []
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"t-{random.getrandbits(40):x}",
        protocol=paho.MQTTv311,
    )
    c.username_pw_set(user, password)
    c.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc.value)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        deadline = time.monotonic() + 5
        while not result and time.monotonic() < deadline:
            time.sleep(0.01)
        if result and result[0] == 0:
            for topic, payload in publishes:
                c.publish(topic, payload, qos=1).wait_for_publish(5)
        return result[0] if result else -1
    finally:
        c.disconnect()
        c.loop_stop()


def test_fnv1a_known_values() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_subjects_round_trip() -> None:
    for device in IDS:
        for kind in ("position", "lock"):
            n = partition_of(device, P)
            assert 0 <= n < P
            parts = parse_subject(device_subject(device, kind, n))
            assert parts is not None and (parts.partition, parts.device_id, parts.kind) == (
                n,
                device,
                kind,
            )
            m = trip_partition("PG-2026-000123", 5)
            parts = parse_subject(trip_subject(m, device, kind))
            assert parts is not None and (parts.partition, parts.device_id) == (m, device)
    assert subject_token("a.b") == "a//b"
    assert parse_subject("devices.x.position") is None
    assert parse_subject("part.x.devices.a.position") is None


def test_config_writes_a_stable_engine_url(tmp_path: Path) -> None:
    cmd, url = write_nats_config(tmp_path, "127.0.0.1:4333", "127.0.0.1:1999", 8)
    cmd2, url2 = write_nats_config(tmp_path, "127.0.0.1:4333", "127.0.0.1:1999", 8)
    assert url == url2 and url.startswith("nats://engine:") and url.endswith("@127.0.0.1:4333")
    assert cmd == cmd2 and cmd.endswith(f"-c {tmp_path.resolve() / 'nats.conf'}")
    conf = (tmp_path / "nats.conf").read_text()
    assert "partition(8,1)" in conf and "127.0.0.1:1999" in conf
    assert (tmp_path / "engine.secret").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError):
        write_nats_config(tmp_path, "nohost", "127.0.0.1:1999", 8)


async def test_mapping_matches_the_server(server: NatsServer) -> None:
    """Every device's MQTT messages land in partition_of(device), always the same one."""
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        layout = await discover_layout(nc)
        assert (layout.partitions, layout.trip_partitions) == (P, P)
        await ensure_streams(js, SMALL, SMALL)
        await ensure_streams(js, SMALL, SMALL)  # idempotent
        for device in IDS:
            rc = await asyncio.to_thread(
                mqtt_session,
                server.mqtt_port,
                device,
                f"pw-{device}",
                [
                    (f"devices/{device}/position", b'{"n": 1}'),
                    (f"devices/{device}/lock", b'{"n": 2}'),
                    (f"devices/{device}/position", b'{"n": 3}'),
                ],
            )
            assert rc == 0, device
        seen: dict[str, set[int]] = {}
        count = 0

        async def handler(batch: object) -> None:
            nonlocal count
            for m in batch:  # type: ignore[attr-defined]
                parts = parse_subject(m.subject)
                assert parts is not None
                seen.setdefault(m.device_id, set()).add(parts.partition)
                assert m.topic.startswith(f"devices/{m.device_id}/")
                count += 1

        consumers = [PartitionConsumer(js, "DEVICES", "part", n, handler) for n in range(P)]
        for c in consumers:
            await c.start()
        deadline = time.monotonic() + 20
        while count < 3 * len(IDS) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for c in consumers:
            await c.stop()
        assert count == 3 * len(IDS)
        assert seen == {d: {partition_of(d, P)} for d in IDS}
        assert len({partition_of(d, P) for d in IDS}) == P  # every partition used
    finally:
        await nc.close()


async def test_device_may_publish_only_its_own_topic(server: NatsServer) -> None:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, SMALL, SMALL)
        own = f"DEVICES_{partition_of('truck-12', P)}"

        async def stored() -> tuple[int, int]:
            """(messages in every device partition's stream, in truck-12's)."""
            infos = [await js.stream_info(f"DEVICES_{n}") for n in range(P)]
            return sum(i.state.messages for i in infos), (await js.stream_info(own)).state.messages

        before, before_own = await stored()
        rc = await asyncio.to_thread(
            mqtt_session,
            server.mqtt_port,
            "truck-12",
            "pw-truck-12",
            [("devices/a.b/position", b"{}"), ("devices/truck-12/position", b"{}")],
        )
        assert rc == 0
        await asyncio.sleep(0.5)
        # only its own message arrived: the one on a.b's topic was refused by the server
        assert await stored() == (before + 1, before_own + 1)
        last = await js.get_last_msg(own, f"part.{partition_of('truck-12', P)}.>")
        assert last.seq == before_own + 1 and last.subject.endswith(".truck-12.position")
        # wrong password, and a NATS-protocol login as a device: refused
        assert await asyncio.to_thread(mqtt_session, server.mqtt_port, "truck-12", "bad") != 0
        with pytest.raises(Exception):  # noqa: B017 - the client raises its own auth error
            await nats.connect(
                f"nats://truck-12:pw-truck-12@127.0.0.1:{server.port}",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )
    finally:
        await nc.close()


async def test_device_users_reload_without_restart(tmp_path: Path) -> None:
    with NatsServer(tmp_path, partitions=2, devices={"old-1": "pw-old"}) as srv:
        pid = srv.proc.pid if srv.proc else 0
        port = srv.mqtt_port
        assert await asyncio.to_thread(mqtt_session, port, "new.1", "pw-new") != 0
        assert await asyncio.to_thread(mqtt_session, port, "old-1", "pw-old") == 0
        nc = await nats.connect(srv.url)  # an engine connection survives the reload
        try:
            srv.set_devices({"new.1": "pw-new"})  # SIGHUP: re-read users.conf
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if await asyncio.to_thread(mqtt_session, port, "new.1", "pw-new") == 0:
                    break
                await asyncio.sleep(0.2)
            assert await asyncio.to_thread(mqtt_session, port, "new.1", "pw-new") == 0
            assert await asyncio.to_thread(mqtt_session, port, "old-1", "pw-old") != 0
            assert srv.proc is not None and srv.proc.pid == pid and srv.proc.poll() is None
            assert nc.is_connected
            await nc.flush(timeout=2)
        finally:
            await nc.close()


async def test_broker_config_prints_a_working_command_and_url(tmp_path: Path) -> None:
    import argparse
    import io
    import shlex
    import subprocess

    from cargowatch.brokerconfig_nats import add_arguments, run
    from tests.services import _wait_port, free_port

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    port, mqtt_port = free_port(), free_port()
    out = io.StringIO()
    listen, mqtt = f"127.0.0.1:{port}", f"127.0.0.1:{mqtt_port}"
    argv = [str(tmp_path / "nats"), "--listen", listen, "--mqtt", mqtt]
    args = parser.parse_args([*argv, "--partitions", "5", "--trip-partitions", "3"])
    assert run(args, out) == 0
    command, url = out.getvalue().splitlines()
    proc = subprocess.Popen(
        shlex.split(command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, 15, proc)
        _wait_port(mqtt_port, 15, proc)
        nc = await nats.connect(url)
        try:
            layout = await discover_layout(nc)
            assert (layout.partitions, layout.trip_partitions) == (5, 3)
        finally:
            await nc.close()
        with pytest.raises(Exception):  # noqa: B017 - the engine URL without its password
            await nats.connect(
                f"nats://engine:wrong@127.0.0.1:{port}",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )
    finally:
        proc.terminate()
        proc.wait(15)


async def test_a_stream_per_partition_and_the_single_stream_layout_retired(
    tmp_path: Path,
) -> None:
    """Each partition gets its own stream; an earlier version's single DEVICES/TRIPS streams
    (their subjects overlap) stop the start while a message in them is unhandled, and are
    removed once drained."""
    with NatsServer(tmp_path / "nats", partitions=2) as srv:
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(name="DEVICES", subjects=["part.*.devices.*.*", "devices.>"])
            )
            await js.add_stream(StreamConfig(name="TRIPS", subjects=["trip.*.>"]))
            await js.publish("devices.d1.position", b"{}")
            await js.add_consumer(
                "DEVICES", ConsumerConfig(durable_name="p0", ack_policy=AckPolicy.ALL)
            )
            with pytest.raises(RuntimeError, match="drained"):
                await ensure_streams(js, SMALL, SMALL)
            sub = await js.pull_subscribe_bind("p0", "DEVICES")
            (msg,) = await sub.fetch(1, timeout=2)
            await msg.ack_sync()
            await ensure_streams(js, SMALL, SMALL)
            names = sorted(str(i.config.name) for i in await js.streams_info())
            assert names == ["DEVICES_0", "DEVICES_1", "TRIPS_0", "TRIPS_1"]
            ack = await js.publish("devices.d1.position", b"{}")
            assert ack.stream == f"DEVICES_{partition_of('d1', 2)}"
            # a device topic of the wrong shape is kept (for a dead letter) by partition 0's
            assert (await js.publish("devices.x.position.extra", b"{}")).stream == "DEVICES_0"
        finally:
            await nc.close()
