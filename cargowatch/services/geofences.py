"""Global geofences (``POST /v1/geofences``): depots, consignees, rest areas, risk zones."""

from __future__ import annotations

import secrets
from typing import Any

from cargowatch.services.engine import EngineGate
from core.clock import Clock
from core.errors import InvalidInput
from geofence import FenceSet, GeometryError
from telemetry.store import Store

FENCE_KINDS = ("depot", "consignee", "rest_area", "risk_zone", "custom")


class GeofenceService:
    def __init__(self, store: Store, clock: Clock, gate: EngineGate) -> None:
        self._store = store
        self._clock = clock
        self._gate = gate

    def put(self, feature: dict[str, Any]) -> dict[str, Any]:
        """Store a GeoJSON Feature as a geofence and give it to the engine."""
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise InvalidInput("a geofence is a GeoJSON Feature")
        props = feature.get("properties") or {}
        kind = props.get("kind")
        if kind not in FENCE_KINDS:
            raise InvalidInput(
                f"properties.kind must be one of {', '.join(FENCE_KINDS)}", kind=kind
            )
        geometry: Any = feature.get("geometry")  # FenceSet.add checks it (GeometryError)
        radius = props.get("radius_m", 200.0)
        if isinstance(radius, bool) or not isinstance(radius, int | float) or radius <= 0:
            raise InvalidInput("properties.radius_m must be a positive number")
        try:
            FenceSet().add("probe", geometry, radius_m=float(radius), kind=kind)
        except (GeometryError, TypeError, ValueError, KeyError) as exc:
            raise InvalidInput(f"bad geometry: {exc}") from exc
        fence_id = str(
            feature.get("id") or props.get("geofence_id") or "gf_" + secrets.token_hex(6)
        )
        doc = {
            "geofence_id": fence_id,
            "kind": kind,
            "name": props.get("name"),
            "shipper": props.get("shipper"),
            "geometry": geometry,
            "radius_m": float(radius),
            "properties": props,
            "created_at": self._clock.now_ms(),
        }
        self._store.put_geofence(doc)
        with self._gate.held() as engine:
            engine.put_geofence(doc)
        return doc
