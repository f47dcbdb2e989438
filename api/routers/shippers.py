"""``/v1/shippers``: a shipper's contract: alarm deadlines (SLA) and default thresholds."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Admin, AnyKey, Staff
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, NotFound
from api.params import Ident
from api.render import render_shipper

router = APIRouter(prefix="/v1/shippers", tags=["shippers"], responses=ERROR_RESPONSES)


# The shapes below document the body; the values are checked by the engine's own validators
# (alerts.validate_sla, rules.validate_rules) in the shipper service, the one place that
# decides what the engine accepts: a 422 from there leaves the stored contract unchanged.


class Deadline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ack_min: float | None = Field(None, description="minutes to acknowledge")
    resolve_min: float | None = Field(None, description="minutes to resolve")


class Sla(BaseModel):
    model_config = ConfigDict(extra="forbid")

    critical: Deadline | None = None
    major: Deadline | None = None
    minor: Deadline | None = None


class ShipperIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sla: Sla = Field(default_factory=Sla)
    rules: dict[str, float] = Field(
        default_factory=dict,
        description='default thresholds, e.g. {"stop_max_min": 45} (names and ranges: '
        "docs/rules.md)",
    )


class ShipperOut(BaseModel):
    shipper: str
    sla: dict[str, dict[str, float]]
    rules: dict[str, float]


@router.put("/{shipper}", response_model=ShipperOut)
def put_shipper(shipper: Ident, body: ShipperIn, runtime: RuntimeDep, principal: Admin) -> dict:
    """Set a shipper's deadlines per severity and its default rule thresholds."""
    doc = {
        "shipper": shipper,
        "sla": body.sla.model_dump(exclude_none=True),
        "rules": body.rules,
    }
    return render_shipper(runtime.put_shipper(doc))


@router.get("", response_model=list[ShipperOut])
def list_shippers(runtime: RuntimeDep, principal: Staff) -> list[dict]:
    return [render_shipper(s) for s in runtime.store.list_shippers()]


@router.get("/{shipper}", response_model=ShipperOut)
def get_shipper(shipper: Ident, runtime: RuntimeDep, principal: AnyKey) -> dict:
    """A shipper's contract (a shipper key: its own only)."""
    doc = runtime.store.get_shipper(shipper)
    if doc is None or not principal.sees(shipper):
        raise NotFound("no such shipper", shipper=shipper)
    return render_shipper(doc)
