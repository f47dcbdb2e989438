"""``/v1/carriers``: the carriers trips name and whom to call there (contract v2 §5).

The desk and admins keep them; staff read them; a shipper sees its trips' carrier on its
alarms (``GET /v1/alarms/{id}``), not the list of every carrier.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Desk, Staff
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, NotFound
from api.render import times_to_iso

router = APIRouter(prefix="/v1/carriers", tags=["carriers"], responses=ERROR_RESPONSES)

CarrierId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]
_TIMES = ("created_at", "updated_at")


class Contact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    role: str | None = Field(None, max_length=100, description="e.g. dispatcher, driver")
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()./\-]{3,32}$")
    email: str | None = Field(None, pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$")


class CarrierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    contacts: list[Contact] = Field(default_factory=list, max_length=50)


class CarrierOut(BaseModel):
    carrier_id: str
    name: str | None
    contacts: list[Contact]
    created_at: str | None = None
    updated_at: str | None = None


@router.put("/{carrier_id}", response_model=CarrierOut)
def put_carrier(
    carrier_id: CarrierId, body: CarrierIn, runtime: RuntimeDep, principal: Desk
) -> dict:
    """Create or replace a carrier and its contacts (each with a phone or an e-mail)."""
    contacts = [c.model_dump() for c in body.contacts]
    return times_to_iso(runtime.put_carrier(carrier_id, body.name, contacts), _TIMES)


@router.get("", response_model=list[CarrierOut])
def list_carriers(runtime: RuntimeDep, principal: Staff) -> list[dict]:
    """Every carrier, by id."""
    return [times_to_iso(c, _TIMES) for c in runtime.store.list_carriers()]


@router.get("/{carrier_id}", response_model=CarrierOut)
def get_carrier(carrier_id: CarrierId, runtime: RuntimeDep, principal: Staff) -> dict:
    """One carrier."""
    doc = runtime.store.get_carrier(carrier_id)
    if doc is None:
        raise NotFound("no such carrier", carrier_id=carrier_id)
    return times_to_iso(doc, _TIMES)
