"""``Settings`` (cargowatch/settings.py): the only reader of the environment, every value checked
when it is built, and the table in docs/operations.md listing exactly its fields."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cargowatch.settings import (
    FLAGS,
    Settings,
    SettingsError,
    bus_servers,
    env_name,
    load_settings,
)

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(\w+)` \| ([^|]*) \| `(\w+)` \| ([^|]*) \| ([^|]+) \|$")


def _table() -> dict[str, tuple[str, str, str, str]]:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line.strip())
        if m:
            name, flag, env, default, meaning = m.groups()
            assert name not in rows, f"{name} is listed twice"
            rows[name] = (flag.strip(), env, default.strip(), meaning.strip())
    return rows


def test_the_operations_table_lists_exactly_the_fields_of_settings() -> None:
    rows = _table()
    assert set(rows) == set(Settings.model_fields), (
        f"missing: {sorted(set(Settings.model_fields) - set(rows))}, "
        f"not settings: {sorted(set(rows) - set(Settings.model_fields))}"
    )
    for name, (flag, env, default, meaning) in rows.items():
        field = Settings.model_fields[name]
        assert env == env_name(name), name
        assert flag == (f"`{FLAGS[name]}`" if name in FLAGS else ""), name
        assert default == ("unset" if field.default is None else f"`{field.default}`"), name
        assert meaning, name


def test_only_settings_reads_the_environment() -> None:
    readers = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "cargowatch").rglob("*.py")
        if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    ]
    assert readers == [], readers


def test_variables_are_read_by_their_cargowatch_names_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP", "MQTT_URL", "DB_URL", "ADMIN_KEY", "http"):
        monkeypatch.setenv(name, "not-for-us")
    monkeypatch.setenv("CARGOWATCH_MQTT", "mqtt://broker.example:1884")
    monkeypatch.setenv("CARGOWATCH_BATCH_MAX", "100")
    settings = load_settings()
    assert settings.http == "127.0.0.1:8080"
    assert settings.mqtt_url == "mqtt://broker.example:1884"
    assert settings.admin_key is None and settings.batch_max == 100
    # a flag wins over the variable
    assert load_settings(mqtt_url="mqtt://other:1883").mqtt_url == "mqtt://other:1883"


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"http": "foo:bar"}, "--http / CARGOWATCH_HTTP: port must be a number"),
        ({"http": "127.0.0.1:99999"}, "from 1 to 65535"),
        ({"http": "http://127.0.0.1:18085"}, "without a scheme"),
        ({"http": "localhost"}, "explicit port"),
        ({"mqtt_url": "http://broker"}, "--mqtt / CARGOWATCH_MQTT"),
        ({"mqtt_url": "mqtt://broker:port"}, "port must be a number"),
        ({"db_url": "mysql://x"}, "--db / CARGOWATCH_DB"),
        ({"db_url": "sqlite://x.db"}, "sqlite:///PATH"),
        ({"log_level": "loud"}, "--log-level"),
        ({"batch_max": 0}, "CARGOWATCH_BATCH_MAX"),
        ({"topic_prefix": "devices/+"}, "CARGOWATCH_TOPIC_PREFIX"),
        ({"clock_speed": float("inf")}, "CARGOWATCH_CLOCK_SPEED"),
        ({"bus_url": "nats://a:4222,,nats://b:4222"}, "--bus / CARGOWATCH_BUS: the bus URL lists"),
        ({"bus_url": "nats://a:4222,http://b:4222"}, "--bus / CARGOWATCH_BUS"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_or_variable(
    given: dict[str, object], says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**given)
    message = str(caught.value)
    assert says in message, message
    assert "\n" not in message, message


def test_a_bad_variable_is_reported_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOWATCH_HTTP", "localhost")
    with pytest.raises(SettingsError, match=r"^CARGOWATCH_HTTP: .*explicit port"):
        load_settings()


def test_the_bus_url_may_list_a_clusters_nodes() -> None:
    url = "nats://engine:pw@a:4222, nats://engine:pw@b:4223"
    assert load_settings(bus_url=url).bus_url == url
    assert bus_servers(url) == ["nats://engine:pw@a:4222", "nats://engine:pw@b:4223"]
    assert bus_servers("nats://engine:pw@a") == ["nats://engine:pw@a"]


def test_the_http_address_splits_into_host_and_port() -> None:
    assert (load_settings().http_host, load_settings().http_port) == ("127.0.0.1", 8080)
    v6 = load_settings(http="[::1]:9000")
    assert (v6.http_host, v6.http_port) == ("::1", 9000)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("smtp://relay:x", "port must be a number"),
        ("http://relay:25", "must look like smtp://"),
        ("smtp://relay:25/path", "must look like smtp://"),
    ],
)
def test_a_bad_smtp_server_is_one_line(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("CARGOWATCH_SMTP", value)
    with pytest.raises(SettingsError, match=rf"^CARGOWATCH_SMTP: .*{message}"):
        load_settings()


def test_tiles_default_to_openstreetmap_and_off_means_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().tiles == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    monkeypatch.setenv("CARGOWATCH_TILES", "off")
    assert load_settings().tiles is None
    assert load_settings(tiles="http://127.0.0.1:9/{z}/{x}/{y}.png").tiles is not None
    smtp = load_settings(smtp="smtp://u:p@relay.example:2525").smtp
    assert smtp == "smtp://u:p@relay.example:2525"
