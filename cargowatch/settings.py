"""Settings: one object, from flags and ``CARGOWATCH_*`` environment variables (contract §8).

``Settings`` is the only reader of the environment. Every value is checked when the object is
built, so a bad URL or port is reported (one line, see ``load_settings``) before anything is
opened, created or bound. docs/operations.md has the table of every field; a test keeps the
two in step.
"""

from __future__ import annotations

import math
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.clock import Clock, ScaledClock, SystemClock
from core.errors import InvalidInput

ENV_PREFIX = "CARGOWATCH_"
# Fields whose variable is not ENV_PREFIX + NAME (the contract's short names).
ENV_NAMES = {"mqtt_url": "CARGOWATCH_MQTT", "db_url": "CARGOWATCH_DB", "bus_url": "CARGOWATCH_BUS"}
# The command-line flag of each field that has one (docs/operations.md, --help).
FLAGS = {
    "mqtt_url": "--mqtt",
    "db_url": "--db",
    "http": "--http",
    "log_level": "--log-level",
    "admin_key": "--api-key",
    "bus_url": "--bus",
    "workers": "--workers",
    "tiles": "--tiles",
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
BROKER_URL_KEYS = {"client_id", "dynsec"}  # the query parameters a broker URL may carry
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"  # what `simulate` publishes to without a setting
# OpenStreetMap's standard tiles; their usage policy asks for the attribution the page shows
# and a real referrer, which browsers send.
OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


class SettingsError(InvalidInput):
    """A setting (flag or environment variable) has a value that cannot be used."""


def env_name(field: str) -> str:
    """The environment variable of a ``Settings`` field."""
    return ENV_NAMES.get(field, ENV_PREFIX + field.upper())


class Settings(BaseSettings):
    """Everything the runtime needs. Flags override the environment; both are checked here."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True, validate_default=True
    )

    mqtt_url: str | None = Field(
        None,
        validation_alias=ENV_NAMES["mqtt_url"],
        description="broker to ingest from, mqtt://[user:pass@]HOST[:PORT]; unset: no ingest",
    )
    db_url: str = Field(
        "sqlite:///cargowatch.sqlite",
        validation_alias=ENV_NAMES["db_url"],
        description="store: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (TimescaleDB)",
    )
    bus_url: str | None = Field(
        None,
        validation_alias=ENV_NAMES["bus_url"],
        description="partitioned engine: NATS JetStream, nats://USER:PASS@HOST:PORT "
        "(`broker-config nats` prints it; a cluster's nodes separated by commas); set: devices "
        "are read from the bus, not --mqtt",
    )
    workers: int = Field(
        0, ge=0, description="serve --bus: engine workers run inside the serve process"
    )
    bus_devices_gib: float = Field(
        50.0,
        gt=0,
        description="bus: the device streams (one per partition) keep at most this many GiB "
        "together (7 days)",
    )
    bus_trips_gib: float = Field(
        20.0,
        gt=0,
        description="bus: the trip streams (one per partition) keep at most this many GiB "
        "together (2 days)",
    )
    bus_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="bus: copies of each stream on a NATS cluster (3 on a 3-node cluster; "
        "1 on a single server)",
    )
    bus_linger_ms: int = Field(
        100,
        ge=0,
        le=1000,
        description="bus: a partition's batch waits this long for more messages, in each "
        "of the two stages (a batch's cost is mostly fixed; adds up to twice this to the "
        "detection latency)",
    )
    bus_skew_hold_s: float = Field(
        20.0,
        ge=0,
        description="bus: stage 1 holds a device partition's batch while it is this many "
        "seconds ahead of another partition's oldest waiting message (0: never)",
    )
    http: str = Field("127.0.0.1:8080", description="HOST:PORT the API listens on")
    admin_key: str | None = Field(
        None, description="this secret is an admin API key (simulate: the key for --api)"
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="log level: debug, info, warning, error, critical"
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT protocol version: 5 or 3.1.1"
    )
    topic_prefix: str = Field(
        "devices", description="topics are PREFIX/DEVICE_ID/position and PREFIX/DEVICE_ID/lock"
    )
    client_id: str = Field("cargowatch-engine", description="MQTT client id (persistent session)")
    shared_group: str | None = Field(
        None, description="subscribe as $share/GROUP/... (several engines share the load)"
    )
    batch_max: int = Field(5000, ge=1, description="messages per ingest batch, at most")
    batch_ms: int = Field(
        50, ge=1, description="a batch closes this many ms after its first message"
    )
    queue_batches: int = Field(8, ge=1, description="batches waiting for the pipeline, at most")
    tick_s: float = Field(
        1.0, gt=0, description="period of the wall-clock rules (signal loss, late)"
    )
    tiles: str | None = Field(
        OSM_TILES,
        description="XYZ tile URL template for the desk's base map (default OpenStreetMap's "
        "standard tiles; `off`: no tiles, a plain grid)",
    )
    smtp: str | None = Field(
        None,
        description="e-mail notifications go through this SMTP server, "
        "smtp://[user:pass@]HOST:PORT (STARTTLS when offered); unset: no e-mail",
    )
    smtp_from: str = Field(
        "cargowatch@localhost", description="the From address of notification e-mails"
    )
    public_url: str | None = Field(
        None,
        description="the desk page's address as people reach it, for links in e-mails "
        "(default http://HTTP/)",
    )
    clock_speed: float = Field(
        1.0, gt=0, description="accelerated time for simulations (1.0 = real time)"
    )
    clock_start_ms: int | None = Field(
        None, description="accelerated clock: the time it reads at CLOCK_ANCHOR_MS (epoch ms)"
    )
    clock_anchor_ms: int | None = Field(
        None, description="accelerated clock: the real time at which it reads CLOCK_START_MS"
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="API: a request body over this many bytes is a 413"
    )
    key_failures_per_min: int = Field(
        20, ge=1, description="API: unknown keys one client address may try per minute (429)"
    )
    allow_private_targets: bool = Field(
        False,
        description="webhook and e-mail targets may be loopback, private or link-local "
        "addresses (tests, on-premise receivers)",
    )
    mqtt_ca: str | None = Field(
        None, description="mqtts://: CA certificate file the broker's certificate must chain to"
    )

    @field_validator(
        "mqtt_url",
        "bus_url",
        "admin_key",
        "shared_group",
        "tiles",
        "mqtt_ca",
        "smtp",
        "public_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("tiles", mode="before")
    @classmethod
    def _tiles_off(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("off", "none") else v

    @field_validator("smtp")
    @classmethod
    def _check_smtp(cls, v: str | None) -> str | None:
        if v is not None:
            smtp_address(v)
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, v: str | None) -> str | None:
        if v is not None:
            broker_address(v)
        return v

    @field_validator("bus_url")
    @classmethod
    def _check_bus_url(cls, v: str | None) -> str | None:
        if v is not None:
            bus_servers(v)
        return v

    @field_validator("db_url")
    @classmethod
    def _check_db_url(cls, v: str) -> str:
        check_db_url(v)
        return v.strip()

    @field_validator("http")
    @classmethod
    def _check_http(cls, v: str) -> str:
        host, port = split_host_port(v)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @field_validator("topic_prefix", "client_id", "shared_group")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "+#/ ")):
            raise ValueError("must be non-empty, without '+', '#', '/' or spaces")
        return v

    @field_validator("clock_speed", "tick_s")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def make_clock(self) -> Clock:
        if self.clock_speed == 1.0 and self.clock_start_ms is None:
            return SystemClock()
        return ScaledClock(self.clock_speed, self.clock_start_ms, self.clock_anchor_ms)

    @property
    def http_host(self) -> str:
        return split_host_port(self.http)[0]

    @property
    def http_port(self) -> int:
        return split_host_port(self.http)[1]


def load_settings(**overrides: Any) -> Settings:
    """The environment with ``overrides`` (flags; ``None`` = not given) on top. A bad value
    raises ``SettingsError`` naming the flag or variable, in one line."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"][0] if err["loc"] else ""
        field = next((f for f in Settings.model_fields if loc in (f, env_name(f))), str(loc) or "?")
        source = FLAGS.get(field) if field in given else None
        where = f"{source} / {env_name(field)}" if source else env_name(field)
        message = str(err["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{where}: {message} (got {err.get('input')!r})") from None


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError says what is wrong."""
    text = value.strip()
    if "://" in text:
        raise ValueError("must be HOST:PORT without a scheme, e.g. 127.0.0.1:8080")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT with an explicit port, e.g. 127.0.0.1:8080")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}")
    if not host or any(c in host for c in "/@ ?#[]") or (":" in host and not bracketed):
        raise ValueError(f"{host!r} is not a host name or address (IPv6: [::1]:8080)")
    return host, int(port)


def broker_address(url: str) -> tuple[str, int]:
    """``mqtt://[user:pass@]host[:port]`` (also ``tcp://`` or a bare ``host[:port]``) ->
    (host, port); ValueError for anything else (telemetry's parser would raise later)."""
    text = url.strip()
    parts = urlsplit(text if "://" in text else f"mqtt://{text}")
    if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
        raise ValueError("the broker URL must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
    try:
        port = parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)
    except ValueError:
        raise ValueError("the broker URL's port must be a number from 1 to 65535") from None
    host = parts.hostname
    # broker-config mosquitto adds ?client_id=…&dynsec=1 (telemetry.ingest.BrokerAddress)
    keys = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if not host or parts.path not in ("", "/") or parts.fragment or keys - BROKER_URL_KEYS:
        raise ValueError("the broker URL must look like mqtt://HOST:PORT")
    return host, port


def bus_address(url: str) -> tuple[str, int]:
    """``nats://[user:pass@]host[:port]`` -> (host, port); ValueError for anything else."""
    return _service_address(url, ("nats", "tls"), 4222, "the bus URL", "nats://USER:PASS@HOST:PORT")


def bus_servers(url: str) -> list[str]:
    """The bus URL's servers: one URL, or several separated by commas (the nodes of a NATS
    cluster, so that a process starts while one of them is down); each checked."""
    servers = [u.strip() for u in url.split(",")]
    for server in servers:
        if not server:
            raise ValueError("the bus URL lists an empty server (two commas, or one at an end)")
        bus_address(server)
    return servers


def check_db_url(url: str) -> None:
    """The forms ``telemetry.store.open_store`` accepts, checked without opening anything."""
    text = url.strip()
    if text.startswith("sqlite:///"):
        path = text[len("sqlite:///") :]
        if not path or "?" in path or "#" in path:
            raise ValueError("a SQLite URL is sqlite:///PATH (a plain file path)")
        return
    if text.startswith(("postgresql://", "postgres://")):
        try:
            urlsplit(text).port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError("a PostgreSQL URL is postgresql://USER@HOST:PORT/DB") from None
        return
    raise ValueError("the database URL must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


def smtp_address(url: str) -> tuple[str, int]:
    """``smtp://[user:pass@]host[:port]`` -> (host, port); ValueError for anything else."""
    return _service_address(url, ("smtp",), 25, "the SMTP server", "smtp://[USER:PASS@]HOST:PORT")


def _service_address(
    url: str, schemes: tuple[str, ...], default_port: int, what: str, form: str
) -> tuple[str, int]:
    """``SCHEME://[user:pass@]host[:port]`` with nothing after it -> (host, port)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in schemes:
        raise ValueError(f"{what} must look like {form}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError(f"{what}'s port must be a number from 1 to 65535") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{what} must look like {form}")
    return parts.hostname, port
