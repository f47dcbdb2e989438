"""``GET /v1/reports/kpi``: how the desk handled alarms (counts, deadlines, false alarms)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import DeskOrTenant
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, NotFound
from api.kpi import compute_kpi
from api.params import Window
from api.render import iso

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=ERROR_RESPONSES)

MAX_ALARMS = 1_000_000


class DeadlineKpi(BaseModel):
    on_time: int
    counted: int
    on_time_rate: float | None
    handled: int
    mean_time_s: float | None


class KpiOut(BaseModel):
    """Alarms raised in [from, to): counts, on-time rates (of alarms whose deadline is
    decided), mean times and the false-alarm rate (false_alarm causes / resolved)."""

    model_config = ConfigDict(populate_by_name=True)

    shipper: str | None
    from_: str | None = Field(None, alias="from")
    to: str | None
    generated_at: str | None
    alarms: int
    by_type: dict[str, int]
    by_severity: dict[str, int]
    by_status: dict[str, int]
    acknowledge: DeadlineKpi
    resolve: DeadlineKpi
    resolved: int
    false_alarms: int
    false_alarm_rate: float | None


@router.get("/kpi", response_model=KpiOut, response_model_by_alias=True)
def kpi(
    runtime: RuntimeDep,
    principal: DeskOrTenant,
    window: Window,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
) -> dict:
    """KPIs of the alarms raised in the window (a shipper key: its own alarms)."""
    if principal.asks_foreign(shipper):
        raise NotFound("no such shipper", shipper=shipper)
    scope = principal.shipper_filter(shipper)
    docs = runtime.store.list_alarms(
        shipper=scope, since_ms=window.since_ms, until_ms=window.until_ms, limit=MAX_ALARMS
    )
    now = runtime.clock.now_ms()
    report = compute_kpi((d for d in docs if principal.sees(d.get("shipper"))), now)
    return {
        "shipper": scope,
        "from": iso(window.since_ms),
        "to": iso(window.until_ms),
        "generated_at": iso(now),
        **report,
    }
