"""Start a private Mosquitto and a private PostgreSQL 15 + TimescaleDB cluster on free loopback
ports, for the test suite and the benchmarks. Binaries come from Debian's packages, installed by
``scripts/install-services.sh``. Each server is stopped by the pid it was started with.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

PG_BIN = Path(os.environ.get("CARGOWATCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
MOSQUITTO = os.environ.get(
    "CARGOWATCH_MOSQUITTO", shutil.which("mosquitto") or "/usr/sbin/mosquitto"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


# Queue limits of the private test broker (the production configuration is written by
# `cargowatch broker-config`). Persistence is on, so a broker restart keeps what it accepted
# (Mosquitto writes its database when it stops and every `autosave_interval` seconds: a
# `kill -9` of the broker loses what arrived since the last save). Per session the broker
# queues up to MAX_QUEUED_MESSAGES QoS 1 messages beyond those in flight, then silently drops
# new ones: 1,000,000 covers more than 3 minutes of a 5,000 msg/s fleet, a 500k-message test
# backlog and the benchmarks, at about 0.5 GB of broker memory when full. MAX_INFLIGHT caps
# what MQTT 3.1.1 clients have unacknowledged (MQTT 5 clients send their Receive Maximum; the
# engine does not rely on either: it stops reading when its own hand-off is full).
MAX_QUEUED_MESSAGES = 1_000_000
MAX_INFLIGHT_MESSAGES = 65_535
AUTOSAVE_INTERVAL_S = 10


class MosquittoServer:
    """A private Mosquitto 2 broker with persistence (see the queue limits above).

    ``restart()`` stops it (it saves its database) and starts it on the same port.
    """

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cw-mosquitto-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> MosquittoServer:
        conf = self.workdir / "mosquitto.conf"
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        # Started as root, Mosquitto would drop to the `mosquitto` user, which cannot write
        # its database and log into a private (0700) test directory.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{user}"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            f"autosave_interval {AUTOSAVE_INTERVAL_S}\n"
            f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
            "max_queued_bytes 0\n"
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}\n"
            "log_type error\nlog_type warning\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _wait_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Mosquitto saves its database, then exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> MosquittoServer:
        """Stop and start again on the same port, keeping the persisted sessions and queues."""
        self.stop()
        return self.start()

    def __enter__(self) -> MosquittoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def publish(url: str, items: Iterable[tuple[str, bytes]], window: int = 5000) -> int:
    """Publish at QoS 1 over MQTT 3.1.1; returns how many the broker acknowledged (PUBACK).

    A minimal blocking publisher for tests and benchmarks that need backlogs of 100k+
    messages: paho publishes about 5k msg/s from Python, this one several times that."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        cid = f"pub-{uuid.uuid4().hex[:12]}".encode()
        body = _str(b"MQTT") + b"\x04\x02" + (60).to_bytes(2, "big") + _str(cid)
        s.sendall(b"\x10" + _varlen(len(body)) + body)
        assert s.recv(4) == b"\x20\x02\x00\x00", "CONNACK"
        buf, sent, acked, rest, mid = bytearray(), 0, 0, 0, 0

        def read_acks() -> None:  # only PUBACKs (4 bytes each) come back
            nonlocal acked, rest
            data = s.recv(65536)
            assert data, "broker closed the connection"
            rest += len(data)
            acked, rest = acked + rest // 4, rest % 4

        for topic, payload in items:
            mid = mid % 65535 + 1
            var = _str(topic.encode()) + mid.to_bytes(2, "big")
            buf += b"\x32" + _varlen(len(var) + len(payload)) + var + payload
            sent += 1
            if len(buf) >= 65536:
                s.sendall(buf)
                buf.clear()
            while sent - acked > window:
                read_acks()
        s.sendall(buf)
        while acked < sent:
            read_acks()
        s.sendall(b"\xe0\x00")
    return acked


class PostgresServer:
    """A private PostgreSQL 15 cluster with TimescaleDB preloaded (PostGIS available)."""

    def __init__(
        self, workdir: Path | None = None, port: int | None = None, durable: bool = False
    ) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cw-pg-"))
        self.datadir = self.workdir / "data"
        self.durable = durable
        self._counter = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the cluster as the postgres user.
            pwd.getpwnam("postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def start(self) -> PostgresServer:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(
                f"PostgreSQL 15 not installed ({PG_BIN}); run scripts/install-services.sh"
            )
        if self._as_user:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        extra = [
            "shared_preload_libraries = 'timescaledb'",
            "timescaledb.telemetry_level = off",
            "max_connections = 200",
            "shared_buffers = 256MB",
        ]
        if not self.durable:
            # Test data is throw-away: skip fsync so the suite stays fast.
            extra += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n".join(extra) + "\n")
        opts = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1"
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-o",
            opts,
            "-l",
            str(self.workdir / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        _wait_port(self.port, 30)
        return self

    def create_database(self, name: str | None = None) -> str:
        """A brand-new empty database; returns its URL."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self._as_user,
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """Three (``size``) nats-server nodes on free loopback ports, each configured by
    ``cargowatch broker-config nats DIR --server-name … --cluster … --routes …`` in its own
    directory under ``workdir``, with the same engine password and device users (copied from
    the first node's directory, as docs/scaling.md tells an operator to). ``kill(i)`` is a
    ``kill -9`` of one node; ``stop()`` ends those still running, each by its own pid."""

    def __init__(
        self,
        workdir: Path | None = None,
        size: int = 3,
        partitions: int = 4,
        devices: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cw-natsc-"))
        self.size = size
        self.partitions = partitions
        self.devices = dict(devices or {})
        self.ports = [free_port() for _ in range(size)]
        self.mqtt_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.names = [f"n{i}" for i in range(size)]
        self.dirs = [self.workdir / name for name in self.names]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.url = ""

    def urls(self) -> list[str]:
        """The engine's URL on each node (the same credentials everywhere)."""
        head = self.url.rsplit("@", 1)[0]
        return [f"{head}@127.0.0.1:{p}" for p in self.ports]

    def configure(self) -> None:
        import argparse
        import io

        from cargowatch import brokerconfig_nats
        from telemetry.bus.config import write_users

        routes = ",".join(f"127.0.0.1:{p}" for p in self.route_ports)
        for i, d in enumerate(self.dirs):
            d.mkdir(parents=True, exist_ok=True)
            if i == 0:
                write_users(d, self.devices)
            else:  # the same users on every node
                for name in ("engine.secret", "devices.json"):
                    shutil.copy2(self.dirs[0] / name, d / name)
            parser = argparse.ArgumentParser()
            brokerconfig_nats.add_arguments(parser)
            args = parser.parse_args(
                [
                    str(d),
                    f"--listen=127.0.0.1:{self.ports[i]}",
                    f"--mqtt=127.0.0.1:{self.mqtt_ports[i]}",
                    f"--partitions={self.partitions}",
                    f"--server-name={self.names[i]}",
                    f"--cluster=127.0.0.1:{self.route_ports[i]}",
                    f"--routes={routes}",
                ]
            )
            out = io.StringIO()
            if brokerconfig_nats.run(args, out) != 0:
                raise RuntimeError(f"broker-config nats failed for {d}")
            url = out.getvalue().splitlines()[1]
            assert not self.url or url.rsplit("@", 1)[0] == self.url.rsplit("@", 1)[0]
            self.url = self.url or url

    def start_node(self, i: int) -> None:
        from telemetry.bus.config import nats_server_binary

        log = open(self.dirs[i] / "nats.log", "ab")  # noqa: SIM115 - owned by the process
        self.procs[i] = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.dirs[i] / "nats.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def start(self, attempts: int = 3) -> NatsCluster:
        """Configure and start every node. A port ``free_port`` picked may be taken before
        its node binds it: the first nodes' route connections go out from ephemeral ports
        of the same range (a fresh-clone run lost a node to ``bind: address already in
        use`` on its MQTT port). Then the whole cluster starts again on new ports."""
        for attempt in range(attempts):
            self.configure()
            for i in range(self.size):
                self.start_node(i)
            try:
                for i in range(self.size):
                    _wait_port(self.ports[i], 15, self.procs[i])
                    _wait_port(self.mqtt_ports[i], 15, self.procs[i])
            except RuntimeError:
                if attempt + 1 == attempts or not self._port_taken():
                    raise
                self.stop()
                self._new_ports()
                continue
            self.wait_ready()
            return self
        raise AssertionError("unreachable")

    def _port_taken(self) -> bool:
        return any(
            "address already in use" in (d / "nats.log").read_text(errors="replace")
            for d in self.dirs
            if (d / "nats.log").exists()
        )

    def _new_ports(self) -> None:
        """Fresh ports and empty node directories (nothing of the failed start is kept)."""
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.ports = [free_port() for _ in range(self.size)]
        self.mqtt_ports = [free_port() for _ in range(self.size)]
        self.route_ports = [free_port() for _ in range(self.size)]
        self.url = ""

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every running node answers a JetStream request (a meta leader is elected)."""
        import asyncio

        import nats

        async def ready(url: str) -> bool:
            try:
                nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
            except Exception:
                return False
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout_s
        for i, url in enumerate(self.urls()):
            if self.procs[i] is None:
                continue
            while not asyncio.run(ready(url)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream not ready on node {i} after {timeout_s} s")
                time.sleep(0.2)

    def kill(self, i: int) -> None:
        """``kill -9`` node ``i`` (its store stays on disk)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.procs[i] = None

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
