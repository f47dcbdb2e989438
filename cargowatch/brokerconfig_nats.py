"""``cargowatch broker-config nats DIR [--listen HOST:PORT] [--mqtt HOST:PORT] [--partitions P]
[--tls-listen HOST:PORT --tls-cert FILE --tls-key FILE]``: write the NATS server's configuration
(``telemetry.bus.config``) and print two lines, the command that starts the server and the
``--bus`` URL with the engine's own credentials.

With a certificate the devices' MQTT listener speaks TLS only (a NATS server has a single MQTT
listener), on ``--tls-listen`` (default: ``--mqtt``'s host, port 8883). The configuration
tells ``serve --bus`` where it lives, so that device passwords issued through the API become
the server's device users at once (``cargowatch.busmode.credentials``).

The CLI registers the sub-command with ``add_arguments`` and runs it with ``run``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from telemetry.bus.config import DEFAULT_PARTITIONS, write_nats_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="directory for the configuration, credentials and store")
    parser.add_argument("--listen", default="127.0.0.1:4222", help="NATS clients (the engine)")
    parser.add_argument("--mqtt", default="127.0.0.1:1883", help="MQTT listener (the devices)")
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="device partitions: the most workers that can share the load",
    )
    parser.add_argument(
        "--trip-partitions", type=int, default=None, help="trip partitions (default: --partitions)"
    )
    parser.add_argument(
        "--tls-listen", default=None, help="the devices' TLS MQTT listener (default: port 8883)"
    )
    parser.add_argument("--tls-cert", default=None, help="the server's certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        command, url = write_nats_config(
            args.dir,
            listen=args.listen,
            mqtt=args.mqtt,
            partitions=args.partitions,
            trip_partitions=args.trip_partitions,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_mqtt=args.tls_listen,
            announce=True,
        )
    except ValueError as exc:
        print(f"cargowatch broker-config nats: {exc}", file=sys.stderr)
        return 2
    print(command, file=out)
    print(url, file=out)
    return 0
