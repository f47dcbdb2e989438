"""``/v1/devices``: register and list GPS units and e-locks (staff only), and their MQTT
credentials: the password is answered once (on registration and on each new issue) and
never stored by cargowatch (docs/devices.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Fleet, Staff
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES, NotFound
from api.params import IDENT_PATTERN, Ident, Limit
from api.render import iso, render_device

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=ERROR_RESPONSES)


class DeviceIn(BaseModel):
    """A device to register (registering it again updates it)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=IDENT_PATTERN, description="1-64 chars of [A-Za-z0-9_.:-]")
    kind: Literal["gps", "lock", "combo"] = "combo"
    shipper: str | None = Field(None, min_length=1, max_length=128)
    name: str | None = Field(None, max_length=200)


class LastFix(BaseModel):
    ts: str
    lat: float
    lon: float
    speed_kmh: float | None = None
    battery_pct: float | None = None


class DeviceOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    device_id: str
    kind: str
    shipper: str | None = None
    name: str | None = None
    created_at: str | None = None
    last_fix: LastFix | None = None
    mqtt_password: str | None = Field(
        None, description="only when the device is new: its MQTT password (user = device_id)"
    )
    mqtt_credentials_applied: bool | None = Field(
        None, description="the broker checks it (a broker written by `broker-config`)"
    )


class CredentialsOut(BaseModel):
    device_id: str
    mqtt_password: str = Field(description="shown once; the previous password stops working")
    mqtt_credentials_applied: bool


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceOut)
def register_device(
    body: DeviceIn, runtime: RuntimeDep, principal: Fleet, response: Response
) -> dict:
    """Register a device (201), or update a registered one (200)."""
    existed = runtime.store.get_device(body.device_id) is not None
    stored = runtime.register_device(body.model_dump(exclude_none=True))
    if existed:
        response.status_code = status.HTTP_200_OK
    return render_device(stored)


@router.post("/{device_id}/credentials", response_model=CredentialsOut)
def issue_credentials(device_id: Ident, runtime: RuntimeDep, principal: Fleet) -> dict:
    """A new MQTT password for the device; sessions with the old one are disconnected."""
    return runtime.device_credentials(device_id)


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def revoke_device(device_id: Ident, runtime: RuntimeDep, principal: Fleet) -> Response:
    """Revoke the device: the broker refuses it from now on (it stays in the history)."""
    runtime.revoke_device(device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", response_model=list[DeviceOut])
def list_devices(
    runtime: RuntimeDep,
    principal: Staff,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 1000,
) -> list[dict]:
    """Registered devices, optionally of one shipper."""
    return [render_device(d) for d in runtime.store.list_devices(shipper)[:limit]]


@router.get("/{device_id}", response_model=DeviceOut)
def get_device(device_id: Ident, runtime: RuntimeDep, principal: Staff) -> dict:
    """One device with its last stored fix."""
    doc = runtime.store.get_device(device_id)
    if doc is None:
        raise NotFound("no such device", device_id=device_id)
    out = render_device(doc)
    fix = runtime.store.last_fix(device_id)
    if fix is not None:
        out["last_fix"] = {
            "ts": iso(fix.ts),
            "lat": fix.lat,
            "lon": fix.lon,
            "speed_kmh": fix.speed_kmh,
            "battery_pct": fix.battery_pct,
        }
    return out
