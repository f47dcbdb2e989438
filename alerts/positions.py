"""A batch's positions as live-feed events, built from the engine's columns.

One event per device per batch, the shape ``_position_event`` gives a ``PositionUpdate``
(``alerts.service``). Built here from ``PositionBatch`` arrays directly: times formatted in
one numpy call and no ``PositionUpdate`` object per fix, because with a desk open every
stored fix of a busy fleet becomes one of these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rules import PositionBatch
from rules.context import STATE_NAMES

__all__ = ["position_events"]

_STATES = np.asarray(STATE_NAMES, dtype=object)


def position_events(batch: PositionBatch) -> list[dict[str, Any]]:
    """The live ``position`` events of ``batch`` (``alerts.render.iso`` times)."""
    if len(batch) == 0:
        return []
    stamps = np.datetime_as_string(batch.ts.astype("datetime64[ms]"), unit="ms").tolist()
    speed = [None if v != v else v for v in batch.speed_kmh.tolist()]
    dist = [None if v != v else v for v in np.round(batch.distance_to_route_m, 1).tolist()]
    return [
        {
            "type": "position",
            "shipper": shipper,
            "data": {
                "device_id": device,
                "trip_id": trip,
                "ts": f"{stamp}Z",
                "lat": lat,
                "lon": lon,
                "speed_kmh": sp,
                "state": state,
                "distance_to_route_m": di,
            },
        }
        for device, trip, shipper, stamp, lat, lon, sp, state, di in zip(
            batch.device_ids.tolist(),
            batch.trip_ids.tolist(),
            batch.shippers.tolist(),
            stamps,
            batch.lat.tolist(),
            batch.lon.tolist(),
            speed,
            _STATES[batch.state].tolist(),
            dist,
            strict=True,
        )
    ]
