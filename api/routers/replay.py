"""``POST /v1/replay``: rerun the rules over stored history (backtest a changed rule set).

Runs on copies: live alarms, trips and webhooks are untouched. Returns the alarms that
would have fired.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import Fleet
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES
from api.params import TIME_HELP, parse_time
from api.render import iso

router = APIRouter(prefix="/v1", tags=["replay"], responses=ERROR_RESPONSES)


class ReplayIn(BaseModel):
    """A trip (or trips), or devices and a time window; ``rules`` overrides thresholds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    trip_id: str | None = Field(None, min_length=1, max_length=128)
    trip_ids: list[str] | None = Field(None, max_length=100)
    device_ids: list[str] | None = Field(None, max_length=1000)
    from_: str | int | None = Field(None, alias="from", description=TIME_HELP)
    to: str | int | None = Field(None, description=TIME_HELP)
    rules: dict[str, float] | None = Field(
        None, description='threshold overrides, e.g. {"corridor_m": 800}'
    )

    @model_validator(mode="after")
    def _something_to_replay(self) -> ReplayIn:
        if not (self.trip_id or self.trip_ids or self.device_ids):
            raise ValueError("give trip_id, trip_ids or device_ids")
        return self


class WouldBeAlarm(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    severity: str
    trip_id: str | None
    device_id: str | None
    shipper: str | None
    ts: str | None
    details: dict[str, Any]


class ReplayOut(BaseModel):
    trip_ids: list[str]
    device_ids: list[str]
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    rules: dict[str, float]
    count: int
    alarms: list[WouldBeAlarm]


@router.post("/replay", response_model=ReplayOut, response_model_by_alias=True)
def replay(body: ReplayIn, runtime: RuntimeDep, principal: Fleet) -> dict:
    """The alarms the rules (with ``rules`` overrides) would raise on the stored history."""
    trip_ids = list(
        dict.fromkeys([*([body.trip_id] if body.trip_id else []), *(body.trip_ids or [])])
    )
    since = None if body.from_ is None else parse_time(body.from_, "from")
    until = None if body.to is None else parse_time(body.to, "to")
    alarms = runtime.replay(
        trip_ids or None, body.device_ids or None, since, until, body.rules or None
    )
    return {
        "trip_ids": trip_ids,
        "device_ids": list(body.device_ids or []),
        "from": iso(since),
        "to": iso(until),
        "rules": body.rules or {},
        "count": len(alarms),
        "alarms": alarms,
    }
