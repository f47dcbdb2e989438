"""Settings: one object, from flags and ``CARGOWATCH_*`` environment variables (contract §8)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.clock import Clock, ScaledClock, SystemClock


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, f"CARGOWATCH_{name.upper().removesuffix('_URL')}")


class Settings(BaseSettings):
    """Everything the runtime needs. Flags override the environment."""

    model_config = SettingsConfigDict(
        env_prefix="CARGOWATCH_", extra="ignore", populate_by_name=True
    )

    mqtt_url: str | None = Field(None, validation_alias=_env("mqtt_url"))
    db_url: str = Field("sqlite:///cargowatch.sqlite", validation_alias=_env("db_url"))
    http: str = Field("127.0.0.1:8080", validation_alias=AliasChoices("http", "CARGOWATCH_HTTP"))
    admin_key: str | None = Field(
        None, validation_alias=AliasChoices("admin_key", "CARGOWATCH_ADMIN_KEY")
    )
    mqtt_protocol: str = "5"
    topic_prefix: str = "devices"
    client_id: str = "cargowatch-engine"
    shared_group: str | None = None
    batch_max: int = 5000
    batch_ms: int = 50
    queue_batches: int = 8
    tick_s: float = 1.0
    tiles: str | None = None
    # Accelerated time for simulations and end-to-end tests (1.0 = real time); see ScaledClock.
    clock_speed: float = 1.0
    clock_start_ms: int | None = None
    clock_anchor_ms: int | None = None

    def make_clock(self) -> Clock:
        if self.clock_speed == 1.0 and self.clock_start_ms is None:
            return SystemClock()
        return ScaledClock(self.clock_speed, self.clock_start_ms, self.clock_anchor_ms)

    @property
    def http_host(self) -> str:
        return self.http.rsplit(":", 1)[0] or "127.0.0.1"

    @property
    def http_port(self) -> int:
        return int(self.http.rsplit(":", 1)[1]) if ":" in self.http else 8080
