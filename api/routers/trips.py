"""``/v1/trips``: create, list, read, complete and cancel trips (shipments)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import status as http_status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AnyKey, Fleet, Principal
from api.deps import RuntimeDep, RuntimeLike
from api.errors import ERROR_RESPONSES, NotFound
from api.params import AnyId, Limit
from api.render import render_trip

router = APIRouter(prefix="/v1/trips", tags=["trips"], responses=ERROR_RESPONSES)

TripStatusName = Literal["planned", "active", "completed", "cancelled"]


class TripIn(BaseModel):
    """A trip plan. Geometry, times and thresholds are checked by the engine's
    plan parser, whose message names the offending field."""

    model_config = ConfigDict(extra="allow")

    trip_id: str = Field(min_length=1, max_length=128)
    shipper: str = Field(min_length=1, max_length=128)
    vehicle: str | None = Field(None, max_length=64)
    carrier: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:\-]{1,64}$",
        description="the carrier's id (PUT /v1/carriers/{carrier_id}): whom the desk calls",
    )
    devices: list[str] = Field(min_length=1, max_length=16)
    origin: dict[str, Any]
    route: dict[str, Any]
    corridor_m: float | None = None
    stops: list[dict[str, Any]] = Field(default_factory=list)
    planned_start: str | int | None = None
    rules: dict[str, float] | None = None


class TripOut(BaseModel):
    """A stored trip; times as RFC 3339; ``live`` is the engine's current view (single reads)."""

    model_config = ConfigDict(extra="allow")

    trip_id: str
    shipper: str
    status: str
    devices: list[str]
    live: dict[str, Any] | None = None


class EndTripIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(
        None, max_length=128, description="ignored: who acts is the API key's name"
    )


def visible_trip(runtime: RuntimeLike, principal: Principal, trip_id: str) -> dict[str, Any]:
    """The stored trip, or 404 when it does not exist or belongs to another tenant."""
    trip = runtime.store.get_trip(trip_id)
    if trip is None or not principal.sees(trip.get("shipper")):
        raise NotFound("no such trip", trip_id=trip_id)
    return trip


@router.post("", status_code=http_status.HTTP_201_CREATED, response_model=TripOut)
def create_trip(body: TripIn, runtime: RuntimeDep, principal: Fleet) -> dict:
    """Create a trip (status ``planned``); its devices are registered if they are not."""
    doc = body.model_dump(exclude_none=True)
    return render_trip(runtime.create_trip(doc))


@router.get("", response_model=list[TripOut])
def list_trips(
    runtime: RuntimeDep,
    principal: AnyKey,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
    status: TripStatusName | None = None,
    limit: Limit = 1000,
) -> list[dict]:
    """Trips, newest ``planned_start`` first; a shipper key sees only its own."""
    if principal.asks_foreign(shipper):
        return []
    trips = runtime.store.list_trips(
        shipper=principal.shipper_filter(shipper), status=status, limit=limit
    )
    return [render_trip(t) for t in trips if principal.sees(t.get("shipper"))]


@router.get("/{trip_id}", response_model=TripOut)
def get_trip(trip_id: AnyId, runtime: RuntimeDep, principal: AnyKey) -> dict:
    """One trip with the engine's live view (state, last fix, next stop)."""
    trip = visible_trip(runtime, principal, trip_id)
    return render_trip(trip, runtime.trip_state(trip_id))


def _end(runtime: RuntimeLike, principal: Principal, trip_id: str, end: str) -> dict:
    visible_trip(runtime, principal, trip_id)
    # who is the key's name, never a name in the body (contract v2 §5)
    return render_trip(runtime.end_trip(trip_id, end, principal.actor))


@router.post("/{trip_id}/complete", response_model=TripOut)
def complete_trip(
    trip_id: AnyId, runtime: RuntimeDep, principal: Fleet, body: EndTripIn | None = None
) -> dict:
    """Mark a trip completed by hand (409 if it has already ended)."""
    return _end(runtime, principal, trip_id, "completed")


@router.post("/{trip_id}/cancel", response_model=TripOut)
def cancel_trip(
    trip_id: AnyId, runtime: RuntimeDep, principal: Fleet, body: EndTripIn | None = None
) -> dict:
    """Cancel a trip (409 if it has already ended); its open alarms stay for the desk."""
    return _end(runtime, principal, trip_id, "cancelled")
