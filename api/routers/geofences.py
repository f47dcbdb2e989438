"""``/v1/geofences``: depots, consignees, rest areas, risk zones (GeoJSON Features)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Fleet, Staff
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, NotFound
from api.params import AnyId, Limit
from api.render import render_fence

router = APIRouter(prefix="/v1/geofences", tags=["geofences"], responses=ERROR_RESPONSES)

FenceKind = Literal["depot", "consignee", "rest_area", "risk_zone", "custom"]


class FenceProperties(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: FenceKind
    name: str | None = Field(None, max_length=200)
    shipper: str | None = Field(
        None, min_length=1, max_length=128, description="owner; absent = applies to all"
    )
    radius_m: float | None = Field(
        None, gt=0, le=50_000, description="circle radius for a Point (default 200 m)"
    )
    geofence_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")


class Geometry(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["Point", "Polygon", "MultiPolygon"]
    coordinates: list[Any]


class FenceIn(BaseModel):
    """A GeoJSON Feature: a Polygon, or a Point with ``properties.radius_m``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["Feature"]
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    geometry: Geometry
    properties: FenceProperties


class FenceOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["Feature"] = "Feature"
    id: str
    geometry: dict[str, Any] | None
    properties: dict[str, Any]


class FenceCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[FenceOut]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=FenceOut)
def put_geofence(body: FenceIn, runtime: RuntimeDep, principal: Fleet) -> dict:
    """Store a geofence (an ``id`` that exists replaces it) and load it into the engine."""
    feature = body.model_dump(exclude_none=True)
    return render_fence(runtime.put_geofence(feature))


@router.get("", response_model=FenceCollection)
def list_geofences(
    runtime: RuntimeDep,
    principal: Staff,
    kind: FenceKind | None = None,
    shipper: Annotated[
        str | None, Query(max_length=128, description="this shipper's and the global fences")
    ] = None,
    limit: Limit = 10_000,
) -> dict:
    """All geofences as a FeatureCollection."""
    fences = runtime.store.list_geofences(shipper=shipper, kind=kind)[:limit]
    return {"type": "FeatureCollection", "features": [render_fence(f) for f in fences]}


@router.get("/{geofence_id}", response_model=FenceOut)
def get_geofence(geofence_id: AnyId, runtime: RuntimeDep, principal: Staff) -> dict:
    doc = runtime.store.get_geofence(geofence_id)
    if doc is None:
        raise NotFound("no such geofence", geofence_id=geofence_id)
    return render_fence(doc)
