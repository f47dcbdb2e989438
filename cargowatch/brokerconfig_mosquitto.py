"""``cargowatch broker-config mosquitto DIR [--listen HOST:PORT] [--tls-listen HOST:PORT
--tls-cert FILE --tls-key FILE]``: a complete Mosquitto 2 configuration for production.

Writes into DIR:

- ``mosquitto.conf``: the listener(s), no anonymous access, persistence in ``DIR/data``,
  the queue limits below, and Mosquitto's dynamic-security plugin (shipped with Debian's
  package) so that device credentials change without a restart;
- ``dynamic-security.json``: the plugin's state: two roles (``cargowatch-engine`` reads
  every device topic and manages clients through ``$CONTROL/dynamic-security/v1``;
  ``dynsec-admin`` for ``mosquitto_ctrl``), the engine's own client and an admin client,
  with random passwords. Devices are added by the engine as the API registers them, each
  with a role of its own allowing it to publish only under ``devices/<device_id>/…``
  (``telemetry.dynsec``);
- ``admin.txt``: the admin's user name and password (for ``mosquitto_ctrl -u admin``).

Prints two lines: the command that starts the broker, then the ``--mqtt`` URL with the
engine's credentials, its client id (random: no client can take over the engine's session
by guessing it) and ``dynsec=1`` (the engine issues device passwords through the plugin).

Queue limits (per client session): up to 1,000,000 QoS 1 messages queued for an offline or
slow engine (a 5,000 msg/s fleet for over 3 minutes, ~0.5 GB when full), 65,535 in flight,
the database saved every 10 s (a ``kill -9`` of the broker loses at most what arrived since
the last save); packets up to 1 MiB (larger payloads than the 256 KiB the contract accepts
still reach the engine and become ``too_large`` dead letters; beyond 1 MiB the broker drops
them).
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from cargowatch.settings import split_host_port

MAX_QUEUED_MESSAGES = 1_000_000
MAX_INFLIGHT_MESSAGES = 65_535
AUTOSAVE_INTERVAL_S = 10
MAX_PACKET_BYTES = 1_048_576
DYNSEC_ITERATIONS = 101
PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_PLACES = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
)
ENGINE_ROLE = "cargowatch-engine"
ADMIN_ROLE = "dynsec-admin"
CONTROL = "$CONTROL/dynamic-security/#"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="directory for the configuration, credentials and store")
    parser.add_argument("--listen", default="127.0.0.1:1883", help="plain MQTT listener")
    parser.add_argument("--tls-listen", default=None, help="TLS listener (default: port 8883)")
    parser.add_argument("--tls-cert", default=None, help="the broker's certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")
    parser.add_argument(
        "--no-plain", action="store_true", help="with a certificate: the TLS listener only"
    )
    parser.add_argument("--topic-prefix", default="devices", help="the devices' topic prefix")
    parser.add_argument("--plugin", default=None, help="path of " + PLUGIN_NAME)


def find_plugin() -> str:
    """The dynamic-security plugin of the installed Mosquitto."""
    for pattern in PLUGIN_PLACES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"{PLUGIN_NAME} not found (Debian: apt-get install mosquitto); give --plugin PATH"
    )


def hashed(password: str) -> dict[str, Any]:
    """A dynamic-security password entry: PBKDF2-HMAC-SHA512, as the plugin stores it."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": DYNSEC_ITERATIONS,
    }


def _acl(acltype: str, topic: str, priority: int = 0) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": priority, "allow": True}


def dynsec_state(prefix: str, engine: tuple[str, str], admin: tuple[str, str]) -> dict[str, Any]:
    """The plugin's initial JSON: roles, the engine's and the admin's clients (devices are
    added through the control topic)."""
    control = [
        _acl("publishClientSend", CONTROL),
        _acl("publishClientReceive", CONTROL),
        _acl("subscribePattern", CONTROL),
        _acl("unsubscribePattern", CONTROL),
    ]
    roles = [
        {
            "rolename": ENGINE_ROLE,
            "textname": "the cargowatch engine: reads every device, manages device clients",
            "acls": [
                _acl("subscribePattern", f"{prefix}/#"),
                _acl("subscribePattern", f"$share/+/{prefix}/#"),
                _acl("publishClientReceive", f"{prefix}/#"),
                _acl("unsubscribePattern", "#"),
                *control,
            ],
        },
        {
            "rolename": ADMIN_ROLE,
            "textname": "mosquitto_ctrl",
            "acls": [*control, _acl("subscribePattern", "$SYS/#")],
        },
    ]
    clients = [
        {
            "username": engine[0],
            "textname": "cargowatch engine",
            "roles": [{"rolename": ENGINE_ROLE}],
            **hashed(engine[1]),
        },
        {
            "username": admin[0],
            "textname": "broker admin",
            "roles": [{"rolename": ADMIN_ROLE}],
            **hashed(admin[1]),
        },
    ]
    return {
        # anything not granted by a role is refused, except receiving what one subscribed to
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def _listener(host_port: str) -> tuple[str, int]:
    host, port = split_host_port(host_port)
    return host, port


def write_mosquitto_config(
    directory: str | os.PathLike[str],
    *,
    listen: str | None = "127.0.0.1:1883",
    tls_listen: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    prefix: str = "devices",
    plugin: str | None = None,
) -> tuple[str, str]:
    """Write the configuration into ``directory``; returns (start command, ``--mqtt`` URL)."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if listen is None and not tls_cert:
        raise ValueError("no listener: give --listen or a TLS certificate")
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    os.chmod(root, 0o700)
    plugin_path = plugin or find_plugin()
    engine = (f"cargowatch-engine-{secrets.token_hex(4)}", secrets.token_urlsafe(24))
    admin = ("admin", secrets.token_urlsafe(24))
    client_id = f"cw-engine-{secrets.token_urlsafe(12)}"
    state = root / "dynamic-security.json"
    state.write_text(json.dumps(dynsec_state(prefix, engine, admin), indent=2) + "\n")
    os.chmod(state, 0o600)
    admin_file = root / "admin.txt"
    admin_file.write_text(f"user {admin[0]}\npassword {admin[1]}\n")
    os.chmod(admin_file, 0o600)
    lines = ["# written by `cargowatch broker-config mosquitto` (docs/devices.md)"]
    # Mosquitto started as root switches to the `mosquitto` user, which cannot read DIR.
    lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    lines += ["per_listener_settings false", "allow_anonymous false"]
    url_host, url_port, scheme = "", 0, "mqtt"
    if listen is not None:
        host, port = _listener(listen)
        lines.append(f"listener {port} {host}")
        url_host, url_port = host, port
    if tls_cert and tls_key:
        host, port = _listener(tls_listen or f"{url_host or '0.0.0.0'}:8883")
        lines += [
            f"listener {port} {host}",
            f"certfile {Path(tls_cert).resolve()}",
            f"keyfile {Path(tls_key).resolve()}",
            "tls_version tlsv1.2",
        ]
        if listen is None:
            url_host, url_port, scheme = host, port, "mqtts"
    lines += [
        f"plugin {plugin_path}",
        f"plugin_opt_config_file {state}",
        "persistence true",
        f"persistence_location {root / 'data'}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "max_queued_bytes 0",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        f"log_dest file {root / 'mosquitto.log'}",
    ]
    conf = root / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    os.chmod(conf, 0o600)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    command = f"{shlex.quote(binary)} -c {shlex.quote(str(conf))}"
    if url_host in ("0.0.0.0", "::"):
        url_host = "127.0.0.1"
    shown = f"[{url_host}]" if ":" in url_host else url_host
    url = (
        f"{scheme}://{quote(engine[0], safe='')}:{quote(engine[1], safe='')}@{shown}:{url_port}"
        f"/?client_id={client_id}&dynsec=1"
    )
    return command, url


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    command, url = write_mosquitto_config(
        args.dir,
        listen=None if args.no_plain else args.listen,
        tls_listen=args.tls_listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        prefix=args.topic_prefix,
        plugin=args.plugin,
    )
    print(command, file=out)
    print(url, file=out)
    return 0
