"""The NATS configuration's credential files (telemetry/bus/config.py) hold no secret: device
passwords, and the engine's in ``users.conf``, are bcrypt hashes the server checks."""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt

from telemetry.bus.config import (
    engine_password,
    password_hash,
    read_devices,
    set_device,
    write_users,
)


def test_device_and_engine_passwords_are_stored_as_hashes(tmp_path: Path) -> None:
    write_users(tmp_path, {"gps.1": "first-secret-token"})
    set_device(tmp_path, "lock:2", "second-secret-token")
    files = (tmp_path / "users.conf").read_text() + (tmp_path / "devices.json").read_text()
    assert "first-secret-token" not in files and "second-secret-token" not in files
    assert engine_password(tmp_path) not in (tmp_path / "users.conf").read_text()
    stored = read_devices(tmp_path)
    assert set(stored) == {"gps.1", "lock:2"}
    assert bcrypt.checkpw(b"first-secret-token", stored["gps.1"].encode())
    assert bcrypt.checkpw(b"second-secret-token", stored["lock:2"].encode())
    assert json.loads((tmp_path / "devices.json").read_text()) == stored
    set_device(tmp_path, "gps.1", None)  # revoked: gone from both files
    assert "gps.1" not in read_devices(tmp_path)
    assert '"gps.1"' not in (tmp_path / "users.conf").read_text()


def test_a_hash_is_not_hashed_again() -> None:
    once = password_hash("token")
    assert once.startswith("$2") and password_hash(once) == once


def test_a_cluster_node_gets_its_name_routes_and_replicated_mqtt_state(tmp_path: Path) -> None:
    import pytest

    from telemetry.bus.config import write_nats_config

    routes = ["127.0.0.1:6222", "nats-route://127.0.0.1:6223", "127.0.0.1:6224"]
    write_nats_config(tmp_path, server_name="n1", cluster="127.0.0.1:6223", routes=routes)
    conf = (tmp_path / "nats.conf").read_text()
    assert 'server_name: "n1"' in conf
    assert 'listen: "127.0.0.1:6223"' in conf and 'name: "cargowatch"' in conf
    assert '"nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223"' in conf
    assert "stream_replicas: 3" in conf and "consumer_replicas: 3" in conf
    single = tmp_path / "single"
    write_nats_config(single)
    assert "cluster {" not in (single / "nats.conf").read_text()
    assert "stream_replicas" not in (single / "nats.conf").read_text()
    with pytest.raises(ValueError, match="--server-name"):
        write_nats_config(tmp_path, cluster="127.0.0.1:6223", routes=routes)
    with pytest.raises(ValueError, match="--cluster"):
        write_nats_config(tmp_path, server_name="n1", routes=routes)
