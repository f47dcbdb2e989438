"""A 3-node NATS cluster with JetStream replicas 3: ``python -m bench.cluster [--quick]``.

Starts three nats-server nodes on free loopback ports, configured by ``cargowatch
broker-config nats DIR --server-name … --cluster … --routes …`` (``tests.services.NatsCluster``),
and, in the same run, one single server (``broker-config nats`` without cluster options) as the
baseline. Prints one JSON object:

- ``throughput``: QoS 1 position fixes published over MQTT 3.1.1 as fast as the publishers
  get PUBACKs (one raw-socket publisher per node, each a device user, at most ``WINDOW``
  unacknowledged), into the DEVICES_{n} streams with replicas 1 on the single server and
  replicas 3 on the cluster: PUBACKs per second and messages stored (the streams' count
  afterwards).
- ``failover``: the publishers (one starting on each node, each given all three MQTT ports)
  send at a fixed total rate; the node that leads the first device's ``DEVICES_{n}`` stream is
  killed with SIGKILL.
  Reported: the seconds until another node leads the stream (stream info's cluster leader,
  asked of a surviving node), the largest gap in the stored messages' stream timestamps, the
  largest gap between PUBACKs each publisher saw and when the cut-off publisher was connected
  again, and — reading the whole stream back — how many acknowledged messages are missing
  (``acked_missing``), how many in flight on the broken connection were never acknowledged
  (``unacked_at_break``, a real device would send those again).

On this 2-core machine the three nodes, the publishers and the reader share two cores, so the
figures are a floor, not a cluster's capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from telemetry.bus.partitions import partition_of
from telemetry.bus.streams import DEVICE_STREAM, GIB, StreamLimits, ensure_streams, stream_name
from tests.nats_service import NatsServer
from tests.services import NatsCluster, _str, _varlen

WINDOW = 5_000  # unacknowledged messages per publisher at most (packet ids are 16-bit)
PASSWORD = "bench-device-secret"
LIMITS = StreamLimits(max_age_s=3600.0, max_bytes=4 * GIB)
P = 4  # device partitions (a stream each)


class Publisher:
    """One device's MQTT 3.1.1 connection publishing QoS 1 fixes over a raw socket; when the
    connection breaks it connects to the next of ``ports``. Knows which messages (by their
    ``seq``) were acknowledged."""

    def __init__(self, device: str, ports: list[int], first: int) -> None:
        self.device = device
        self.topic = f"devices/{device}/position".encode()
        self.ports = ports
        self.index = first
        self.lock = threading.Condition()
        self.inflight: dict[int, int] = {}  # packet id -> seq, on the current connection
        self.acked: list[int] = []
        self.ack_times: list[float] = []  # monotonic time of each read that carried PUBACKs
        self.unacked_at_break = 0
        self.breaks: list[tuple[float, float, int]] = []  # (broken, connected again, port)
        self.seq = 0
        self.mid = 0
        self.sock: socket.socket | None = None
        self._connect()

    @property
    def port(self) -> int:
        return self.ports[self.index % len(self.ports)]

    def _connect(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                cid = f"bench-{uuid.uuid4().hex[:10]}".encode()
                body = (
                    _str(b"MQTT")
                    + b"\x04\xc2"  # username, password, clean session
                    + (30).to_bytes(2, "big")
                    + _str(cid)
                    + _str(self.device.encode())
                    + _str(PASSWORD.encode())
                )
                sock.sendall(b"\x10" + _varlen(len(body)) + body)
                ack = sock.recv(4)
                if ack != b"\x20\x02\x00\x00":
                    raise OSError(f"CONNACK {ack!r}")
                sock.settimeout(None)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                self.index += 1
                time.sleep(0.1)
        with self.lock:
            self.sock = sock
            self.mid = 0
        threading.Thread(target=self._read, args=(sock,), daemon=True).start()

    def _read(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self.lock:
                    if self.sock is sock:
                        self.sock = None
                        self.lock.notify_all()
                return
            buf += data
            n = len(buf) // 4
            now = time.monotonic()
            with self.lock:
                for k in range(n):
                    mid = int.from_bytes(buf[4 * k + 2 : 4 * k + 4], "big")
                    seq = self.inflight.pop(mid, None)
                    if seq is not None:
                        self.acked.append(seq)
                self.ack_times.append(now)
                self.lock.notify_all()
            buf = buf[4 * n :]

    def _reconnect(self) -> None:
        broken = time.monotonic()
        with self.lock:
            self.unacked_at_break += len(self.inflight)
            self.inflight.clear()
        self.index += 1
        self._connect()
        self.breaks.append((broken, time.monotonic(), self.port))

    def publish(self, count: int) -> None:
        with self.lock:
            while self.sock is not None and len(self.inflight) + count > WINDOW:
                self.lock.wait(0.5)
            sock = self.sock
        if sock is None:
            self._reconnect()
            return
        now_ms = int(time.time() * 1000)
        out = bytearray()
        with self.lock:
            for _ in range(count):
                self.seq += 1
                self.mid = self.mid % 65535 + 1
                payload = orjson.dumps(
                    {"ts": now_ms, "lat": 31.45, "lon": 121.10, "speed_kmh": 0.0, "seq": self.seq}
                )
                var = _str(self.topic) + self.mid.to_bytes(2, "big")
                out += b"\x32" + _varlen(len(var) + len(payload)) + var + payload
                self.inflight[self.mid] = self.seq
        try:
            sock.sendall(out)
        except OSError:
            with self.lock:
                if self.sock is sock:
                    self.sock = None
            self._reconnect()

    def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self.inflight and self.sock is not None and time.monotonic() < deadline:
                self.lock.wait(0.2)

    def close(self) -> None:
        with self.lock:
            sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")
            sock.close()

    def max_ack_gap(self, after: float) -> float:
        times = [t for t in self.ack_times if t >= after - 1.0]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def run_publishers(pubs: list[Publisher], duration_s: float, rate: float | None) -> float:
    """Each publisher in its own thread for ``duration_s`` (``rate``: total msg/s, None: as
    fast as PUBACKs come). Returns the seconds it took."""
    stop = time.monotonic() + duration_s

    def loop(pub: Publisher) -> None:
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() < stop:
            if rate is None:
                pub.publish(500)
                continue
            due = int(rate / len(pubs) * (time.monotonic() - t0)) - sent
            if due > 0:
                pub.publish(min(due, 2000))
                sent += min(due, 2000)
            else:
                time.sleep(0.005)

    t0 = time.monotonic()
    threads = [threading.Thread(target=loop, args=(p,), daemon=True) for p in pubs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


async def _stream_info(url: str, timeout_s: float = 1.0) -> Any:
    """The device streams as one: messages added up over the partitions' streams, and the
    cluster (leader) of the stream the benchmark's first device writes to."""
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=timeout_s)
        infos = [await js.stream_info(stream_name(DEVICE_STREAM, n)) for n in range(P)]
        watched = infos[partition_of(devices(1)[0], P)]
        messages = sum(i.state.messages for i in infos)
        return SimpleNamespace(state=SimpleNamespace(messages=messages), cluster=watched.cluster)
    finally:
        await nc.close()


def stream_info(url: str) -> Any:
    return asyncio.run(_stream_info(url))


async def _create(url: str, replicas: int) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream(timeout=10), LIMITS, LIMITS, replicas=replicas)
    finally:
        await nc.close()


async def _read_back(url: str, expected: int) -> list[tuple[str, int, float]]:
    """Every message in the DEVICES_{n} streams as (device, seq, stream timestamp in s)."""
    nc = await nats.connect(url)
    out: list[tuple[str, int, float]] = []
    try:
        js = nc.jetstream(timeout=10)
        for n in range(P):
            sub = await js.pull_subscribe(
                "",
                stream=stream_name(DEVICE_STREAM, n),
                config=ConsumerConfig(
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.ALL,
                    num_replicas=1,
                    mem_storage=True,
                ),
            )
            deadline = time.monotonic() + 120
            while len(out) < expected and time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(5000, timeout=2)
                except nats.errors.TimeoutError:
                    break  # this partition's stream is read to its end
                for m in msgs:
                    device = m.subject.split(".")[3]
                    ts = m.metadata.timestamp.timestamp()
                    out.append((device, orjson.loads(m.data)["seq"], ts))
            await sub.unsubscribe()
    finally:
        await nc.close()
    return out


def devices(n: int) -> list[str]:
    return [f"bench-gps-{i}" for i in range(n)]


def throughput(ports: list[int], url: str, replicas: int, duration_s: float) -> dict[str, Any]:
    asyncio.run(_create(url, replicas))
    pubs = [Publisher(d, [p], 0) for d, p in zip(devices(len(ports)), ports, strict=True)]
    elapsed = run_publishers(pubs, duration_s, None)
    for p in pubs:
        p.drain(30)
        p.close()
    acked = sum(len(p.acked) for p in pubs)
    time.sleep(1.0)
    stored = stream_info(url).state.messages
    return {
        "replicas": replicas,
        "publishers": len(pubs),
        "seconds": round(elapsed, 2),
        "acked": acked,
        "stored": stored,
        "acked_msg_per_s": round(acked / elapsed),
    }


def failover(cluster: NatsCluster, rate: float, before_s: float, after_s: float) -> dict[str, Any]:
    asyncio.run(_purge(cluster.url))
    leader = stream_info(cluster.url).cluster.leader
    victim = cluster.names.index(leader)
    survivor = next(u for i, u in enumerate(cluster.urls()) if i != victim)
    pubs = [Publisher(d, cluster.mqtt_ports, i) for i, d in enumerate(devices(cluster.size))]
    result: dict[str, Any] = {"rate_msg_per_s": rate, "killed": leader}
    killed_at: list[float] = []

    def kill_later() -> None:
        time.sleep(before_s)
        killed_at.append(time.monotonic())
        killed_wall.append(time.time())
        cluster.kill(victim)

    killed_wall: list[float] = []
    killer = threading.Thread(target=kill_later, daemon=True)
    killer.start()
    elected: list[float] = []

    def watch() -> None:
        killer.join()
        while time.monotonic() - killed_at[0] < 60:
            try:
                now_leader = stream_info(survivor).cluster.leader
            except Exception:
                now_leader = None
            if now_leader and now_leader != leader:
                elected.append(time.monotonic() - killed_at[0])
                result["new_leader"] = now_leader
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_publishers(pubs, before_s + after_s, rate)
    watcher.join()
    for p in pubs:
        p.drain(30)
        p.close()
    acked = {(p.device, s) for p in pubs for s in p.acked}
    sent = sum(p.seq for p in pubs)
    time.sleep(1.0)
    in_stream = stream_info(survivor).state.messages
    stored = asyncio.run(_read_back(survivor, in_stream))
    keys = {(d, s) for d, s, _ in stored}
    t_kill = killed_wall[0]
    stamps = sorted(ts for _, _, ts in stored if ts >= t_kill - 1.0)
    gaps = [(b - a, a) for a, b in itertools.pairwise(stamps)]
    gap, gap_at = max(gaps, default=(0.0, t_kill))
    moved = [p for p in pubs if p.breaks]
    result.update(
        {
            "leader_elected_s": round(elected[0], 2) if elected else None,
            "store_gap_s": round(gap, 2),
            "store_gap_starts_s_after_kill": round(gap_at - t_kill, 2),
            "stored_again_s_after_kill": round(gap_at + gap - t_kill, 2),
            "puback_gap_s": {p.device: round(p.max_ack_gap(killed_at[0]), 2) for p in pubs},
            "reconnected_s": [round(b[1] - killed_at[0], 2) for p in moved for b in p.breaks],
            "sent": sent,
            "acked": len(acked),
            "stored": in_stream,
            "read_back": len(stored),
            "duplicates": len(stored) - len(keys),
            "acked_missing": len(acked - keys),
            "unacked_at_break": sum(p.unacked_at_break for p in pubs),
        }
    )
    return result


async def _purge(url: str) -> None:
    nc = await nats.connect(url)
    try:
        for n in range(P):
            await nc.jetstream(timeout=10).purge_stream(stream_name(DEVICE_STREAM, n))
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="shorter phases (about a minute)")
    ap.add_argument("--rate", type=float, default=3000.0, help="failover: total msg/s")
    args = ap.parse_args(argv)
    seconds = 5.0 if args.quick else 15.0
    before, after = (4.0, 8.0) if args.quick else (10.0, 20.0)
    root = Path(tempfile.mkdtemp(prefix="cw-bench-cluster-"))
    users = {d: PASSWORD for d in devices(3)}
    report: dict[str, Any] = {"bench": "cluster", "quick": args.quick}
    try:
        with NatsServer(root / "single", partitions=P, devices=users) as single:
            report["single_r1"] = throughput([single.mqtt_port] * 3, single.url, 1, seconds)
        with NatsCluster(root / "cluster", size=3, partitions=P, devices=users) as cluster:
            report["cluster_r3"] = throughput(cluster.mqtt_ports, cluster.url, 3, seconds)
            report["cluster_r3"]["leader"] = stream_info(cluster.url).cluster.leader
            report["failover"] = failover(cluster, args.rate, before, after)
        r1 = report["single_r1"]["acked_msg_per_s"]
        r3 = report["cluster_r3"]["acked_msg_per_s"]
        report["r3_vs_r1"] = round(r3 / r1, 2) if r1 else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
