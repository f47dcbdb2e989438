"""Trip documents (CONTRACT §3) checked and turned into plans the engine can run.

``parse_trip`` is strict about what it uses (route, fences, times, devices, thresholds) and
ignores fields it does not use (``status``, ``vehicle`` extras, ...), which the store keeps.
Every problem raises TripPlanError with the path of the offending field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

from rules.errors import RuleValueError, TripPlanError
from rules.thresholds import validate_rules

__all__ = ["FencePlan", "StopPlan", "TripPlan", "parse_time_ms", "parse_trip"]

DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
DEFAULT_FENCE_RADIUS_M = 200.0
_MAX_RADIUS_M = 50_000.0
_MAX_ID = 128


@dataclass(frozen=True, slots=True)
class FencePlan:
    """An origin or stop area: a GeoJSON Point with ``radius_m`` or a Polygon."""

    geometry: dict[str, Any]
    radius_m: float
    name: str | None = None


@dataclass(frozen=True, slots=True)
class StopPlan:
    """One planned stop (consignee), in plan order."""

    stop_id: str
    fence: FencePlan
    eta_ms: int | None
    max_dwell_min: float | None
    unlock_allowed: bool


@dataclass(frozen=True, slots=True, eq=False)
class TripPlan:
    """A checked trip document. ``route`` is a float64 (N, 2) lon/lat array."""

    trip_id: str
    shipper: str
    devices: tuple[str, ...]
    origin: FencePlan
    route: npt.NDArray[np.float64]
    stops: tuple[StopPlan, ...]
    planned_start_ms: int
    corridor_m: float | None = None
    rules: Mapping[str, float] = field(default_factory=dict)
    vehicle: str | None = None

    def stop_index(self, stop_id: str) -> int | None:
        """Plan position of ``stop_id`` (None if the trip has no such stop)."""
        for i, stop in enumerate(self.stops):
            if stop.stop_id == stop_id:
                return i
        return None


#: A trip's ``carrier``: the id of ``PUT /v1/carriers/{carrier_id}`` (whom the desk calls).
_CARRIER_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def parse_time_ms(value: object, where: str) -> int:
    """An RFC 3339 / ISO 8601 time with offset (or ``Z``), or integer epoch ms, as epoch ms."""
    if isinstance(value, bool):
        raise TripPlanError(f"{where} must be a time, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str) or not value:
        raise TripPlanError(f"{where} must be an ISO 8601 time with offset, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TripPlanError(f"{where} is not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise TripPlanError(f"{where} needs a UTC offset or Z: {value!r}")
    return round(parsed.timestamp() * 1000)


def _text(doc: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TripPlanError(f"{where}{key} must be a non-empty string")
    if len(value) > _MAX_ID and key.endswith("_id"):
        raise TripPlanError(f"{where}{key} is longer than {_MAX_ID} characters")
    return value


def _number(value: object, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TripPlanError(f"{where} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not low <= v <= high:
        raise TripPlanError(f"{where} must be in [{low:g}, {high:g}], got {v:g}")
    return v


def _geometry(obj: object, where: str) -> dict[str, Any]:
    """A GeoJSON geometry dict (a Feature is unwrapped)."""
    if isinstance(obj, Mapping) and obj.get("type") == "Feature":
        obj = obj.get("geometry")
    if not isinstance(obj, Mapping) or not isinstance(obj.get("type"), str):
        raise TripPlanError(f"{where} must be a GeoJSON geometry object")
    return dict(obj)


def _check_position(pos: object, where: str) -> tuple[float, float]:
    if (
        not isinstance(pos, list | tuple)
        or len(pos) < 2
        or any(isinstance(c, bool) or not isinstance(c, int | float) for c in pos[:2])
    ):
        raise TripPlanError(f"{where} must be a [lon, lat] position")
    lon, lat = float(pos[0]), float(pos[1])
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise TripPlanError(f"{where} is out of range (lon/lat order): {list(pos[:2])}")
    return lon, lat


def _fence(obj: object, where: str) -> FencePlan:
    """An origin or stop fence: ``{"geometry": Point|Polygon, "radius_m"?, "name"?}``."""
    if not isinstance(obj, Mapping):
        raise TripPlanError(f"{where} must be an object with a geometry")
    geom = _geometry(obj.get("geometry"), f"{where}.geometry")
    radius = DEFAULT_FENCE_RADIUS_M
    if obj.get("radius_m") is not None:
        radius = _number(obj["radius_m"], f"{where}.radius_m", 1.0, _MAX_RADIUS_M)
    gtype = geom["type"]
    coords = geom.get("coordinates")
    if gtype == "Point":
        _check_position(coords, f"{where}.geometry.coordinates")
    elif gtype in ("Polygon", "MultiPolygon"):
        try:
            shape = shapely.geometry.shape(geom)
        except Exception as exc:  # shapely raises several kinds for malformed coordinates
            raise TripPlanError(f"{where}.geometry is not a valid {gtype}: {exc}") from None
        if shape.is_empty or not shapely.is_valid(shape) or shape.area <= 0:
            reason = shapely.is_valid_reason(shape) if not shape.is_empty else "empty"
            raise TripPlanError(f"{where}.geometry is not a valid {gtype}: {reason}")
        xy = shapely.get_coordinates(shape)
        if (np.abs(xy[:, 0]) > 180).any() or (np.abs(xy[:, 1]) > 90).any():
            raise TripPlanError(f"{where}.geometry is out of range (lon/lat order)")
    else:
        raise TripPlanError(f"{where}.geometry must be a Point or a Polygon, got {gtype!r}")
    name = obj.get("name")
    return FencePlan(geom, radius, name if isinstance(name, str) else None)


def _fast_positions(coords: list[Any]) -> npt.NDArray[np.float64] | None:
    """Positions as an (N, 2) array when all are well-formed and in range (routes have
    thousands of vertices: checked as one array), else None (booleans pass as numbers)."""
    try:
        line = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if line.ndim != 2 or line.shape[1] < 2:
        return None
    line = np.ascontiguousarray(line[:, :2])
    ok = (
        np.isfinite(line).all()
        and (np.abs(line[:, 0]) <= 180.0).all()
        and (np.abs(line[:, 1]) <= 90.0).all()
    )
    return line if ok else None


def _route(obj: object) -> npt.NDArray[np.float64]:
    geom = _geometry(obj, "route")
    if geom["type"] != "LineString":
        raise TripPlanError(f"route must be a GeoJSON LineString, got {geom['type']!r}")
    coords = geom.get("coordinates")
    if not isinstance(coords, list) or len(coords) < 2:
        raise TripPlanError("route.coordinates needs at least 2 positions")
    line = _fast_positions(coords)
    if line is None:  # find and name the offending position
        pts = [_check_position(p, f"route.coordinates[{i}]") for i, p in enumerate(coords)]
        line = np.asarray(pts, dtype=np.float64)
    if not (np.diff(line, axis=0) != 0).any():
        raise TripPlanError("route has zero length (all positions equal)")
    return line


def _stops(obj: object) -> tuple[StopPlan, ...]:
    if obj is None:
        return ()
    if not isinstance(obj, list):
        raise TripPlanError("stops must be a list")
    stops: list[StopPlan] = []
    seen: set[str] = set()
    for i, raw in enumerate(obj):
        where = f"stops[{i}]"
        if not isinstance(raw, Mapping):
            raise TripPlanError(f"{where} must be an object")
        stop_id = _text(raw, "stop_id", f"{where}.")
        assert stop_id is not None
        if stop_id in seen:
            raise TripPlanError(f"{where}.stop_id {stop_id!r} is used twice; stop ids are unique")
        seen.add(stop_id)
        eta = None if raw.get("eta") is None else parse_time_ms(raw["eta"], f"{where}.eta")
        dwell = None
        if raw.get("max_dwell_min") is not None:
            dwell = _number(raw["max_dwell_min"], f"{where}.max_dwell_min", 0.0, 43_200.0)
        unlock = raw.get("unlock_allowed", True)
        if not isinstance(unlock, bool):
            raise TripPlanError(f"{where}.unlock_allowed must be true or false")
        stops.append(StopPlan(stop_id, _fence(raw, where), eta, dwell, unlock))
    return tuple(stops)


def _devices(obj: object) -> tuple[str, ...]:
    if not isinstance(obj, list) or not obj:
        raise TripPlanError("devices must be a non-empty list of device ids")
    out: list[str] = []
    for i, dev in enumerate(obj):
        if not isinstance(dev, str) or not DEVICE_ID.match(dev):
            raise TripPlanError(
                f"devices[{i}] must be 1-64 characters of [A-Za-z0-9_.:-], got {dev!r}"
            )
        if dev in out:
            raise TripPlanError(f"devices[{i}] {dev!r} is listed twice")
        out.append(dev)
    return tuple(out)


def parse_trip(doc: Mapping[str, Any]) -> TripPlan:
    """Check a contract §3 trip document and return its plan; TripPlanError if invalid."""
    if not isinstance(doc, Mapping):
        raise TripPlanError("a trip document must be a JSON object")
    trip_id = _text(doc, "trip_id", "")
    shipper = _text(doc, "shipper", "")
    assert trip_id is not None and shipper is not None
    if "planned_start" not in doc:
        raise TripPlanError("planned_start is required")
    corridor = None
    if doc.get("corridor_m") is not None:
        corridor = _number(doc["corridor_m"], "corridor_m", 1.0, 100_000.0)
    try:
        rules = validate_rules(doc.get("rules"), "rules")
    except RuleValueError as exc:
        raise TripPlanError(exc.message) from None
    vehicle = doc.get("vehicle")
    carrier = _text(doc, "carrier", "", required=False)
    if carrier is not None and not _CARRIER_ID.match(carrier):
        raise TripPlanError("carrier must be a carrier id: 1-64 of [A-Za-z0-9_.:-]")
    return TripPlan(
        trip_id=trip_id,
        shipper=shipper,
        devices=_devices(doc.get("devices")),
        origin=_fence(doc.get("origin"), "origin"),
        route=_route(doc.get("route")),
        stops=_stops(doc.get("stops")),
        planned_start_ms=parse_time_ms(doc["planned_start"], "planned_start"),
        corridor_m=corridor,
        rules=rules,
        vehicle=vehicle if isinstance(vehicle, str) else None,
    )
