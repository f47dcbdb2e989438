"""``cargowatch broker-config nats DIR [--listen HOST:PORT] [--mqtt HOST:PORT] [--partitions P]
[--tls-listen HOST:PORT --tls-cert FILE --tls-key FILE]
[--server-name NAME --cluster HOST:PORT --routes HOST:PORT,... [--cluster-name NAME]]``: write
the NATS server's configuration
(``telemetry.bus.config``) and print two lines, the command that starts the server and the
``--bus`` URL with the engine's own credentials.

With a certificate the devices' MQTT listener speaks TLS only (a NATS server has a single MQTT
listener), on ``--tls-listen`` (default: ``--mqtt``'s host, port 8883). The configuration
tells ``serve --bus`` where it lives, so that device passwords issued through the API become
the server's device users at once (``cargowatch.busmode.credentials``).

With ``--cluster`` the server is one node of a NATS cluster: the configuration gains a
``cluster {}`` block (its route listener and every node's route), and the MQTT listener keeps
its sessions in JetStream with up to 3 replicas, so that they survive a node as the device
streams do (``CARGOWATCH_BUS_REPLICAS=3``). Every node must have the same users: the engine's
password (``engine.secret``) and the device users (``devices.json``) are read from DIR when
they are there, so copy them from the first node's DIR before running the command for the
others (docs/scaling.md, "A NATS cluster").

The CLI registers the sub-command with ``add_arguments`` and runs it with ``run``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from telemetry.bus.config import (
    DEFAULT_CLUSTER,
    DEFAULT_PARTITIONS,
    DEFAULT_SERVER_NAME,
    write_nats_config,
)


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
    cluster = parser.add_argument_group(
        "cluster",
        "a node of a NATS cluster (3 nodes: JetStream replicas 3 survive one node). Run the "
        "command once per node, each with its own DIR, --server-name and --cluster, and the "
        "same --routes, --partitions and credentials: copy engine.secret and devices.json from "
        "the first node's DIR into each other node's DIR before running it there",
    )
    cluster.add_argument(
        "--server-name", default=None, help="this node's name, unique in the cluster"
    )
    cluster.add_argument(
        "--cluster",
        default=None,
        metavar="HOST:PORT",
        help="this node's route listener, where the other nodes connect",
    )
    cluster.add_argument(
        "--routes",
        default=None,
        metavar="HOST:PORT,...",
        help="every node's route listener (this node's own may be listed too)",
    )
    cluster.add_argument(
        "--cluster-name", default=DEFAULT_CLUSTER, help="the cluster's name, the same on every node"
    )


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
            server_name=args.server_name or DEFAULT_SERVER_NAME,
            cluster=args.cluster,
            routes=[r for r in (args.routes or "").split(",") if r.strip()],
            cluster_name=args.cluster_name,
        )
    except ValueError as exc:
        print(f"cargowatch broker-config nats: {exc}", file=sys.stderr)
        return 2
    print(command, file=out)
    print(url, file=out)
    return 0
