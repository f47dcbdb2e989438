"""Device identities and the JSON payloads they publish (contract §2).

Devices differ the way a mixed real fleet does: some send ``ts`` as RFC 3339 (``Z``), others
as epoch milliseconds; some echo their ``device_id`` (equal to the topic's) or add fields the
contract does not know (``fw``), which ingest must keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from numpy.typing import NDArray

from simulators.roads import IntArray
from simulators.truck import Reporting

_DEFAULT_REPORTING = Reporting()

RFC3339 = "rfc3339"
EPOCH_MS = "epoch_ms"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device on a truck. ``kind`` is ``gps``, ``lock`` or ``combined`` (a GPS e-lock
    publishing both topics)."""

    device_id: str
    kind: str
    ts_style: str = RFC3339
    seq0: int = 1
    echo_id: bool = False  # payload carries its own device_id
    firmware: str | None = None  # an extra field ingest must keep
    battery0: float = 100.0  # battery at power-on, %
    drain_per_h: float = 0.0  # battery drain, % per hour
    reporting: Reporting = _DEFAULT_REPORTING
    heartbeat_s: int = 300  # lock heartbeat period
    skew_ms: int = 0  # the device clock's error: ``ts`` = true time + skew

    @property
    def topics(self) -> tuple[str, ...]:
        """Topic suffixes this device publishes."""
        return {"gps": ("position",), "lock": ("lock",)}.get(self.kind, ("position", "lock"))

    def battery_at(self, on_ms: int, t_ms: NDArray) -> NDArray:
        """Whole-percent battery at times ``t_ms``."""
        hours = (np.asarray(t_ms, dtype=np.float64) - on_ms) / 3_600_000.0
        return np.clip(np.round(self.battery0 - self.drain_per_h * hours), 0, 100).astype(int)


def format_ts(t_ms: IntArray, style: str) -> list:
    """Timestamps as the device writes them: RFC 3339 UTC with ``Z`` (milliseconds only when
    not whole seconds) or integer epoch milliseconds."""
    t_ms = np.asarray(t_ms, dtype=np.int64)
    if style == EPOCH_MS:
        return t_ms.tolist()
    text = np.datetime_as_string(t_ms.astype("datetime64[ms]"), unit="ms")
    return [(x[:-4] if x.endswith(".000") else x) + "Z" for x in text.tolist()]


def _extras(dev: DeviceSpec, body: dict) -> dict:
    if dev.echo_id:
        body["device_id"] = dev.device_id
    if dev.firmware is not None:
        body["fw"] = dev.firmware
    return body


def fix_bodies(
    dev: DeviceSpec, t_ms: IntArray, cols: dict[str, NDArray], battery: NDArray, seq: IntArray
) -> list[dict]:
    """Position fix objects (not yet encoded); ``ts`` as the device's clock reads it."""
    ts = format_ts(np.asarray(t_ms, dtype=np.int64) + dev.skew_ms, dev.ts_style)
    lat = np.round(cols["lat"], 6).tolist()
    lon = np.round(cols["lon"], 6).tolist()
    speed = np.round(cols["speed_kmh"], 1).tolist()
    heading = np.round(cols["heading_deg"], 1).tolist()
    hdop = np.asarray(cols["hdop"]).tolist()
    sats = np.asarray(cols["sats"]).tolist()
    bat = np.asarray(battery).tolist()
    sq = np.asarray(seq).tolist()
    return [
        _extras(
            dev,
            {
                "ts": ts[i],
                "lat": lat[i],
                "lon": lon[i],
                "speed_kmh": speed[i],
                "heading_deg": heading[i],
                "hdop": hdop[i],
                "sats": sats[i],
                "battery_pct": bat[i],
                "seq": sq[i],
            },
        )
        for i in range(len(ts))
    ]


def lock_body(
    dev: DeviceSpec,
    t_ms: int,
    event: str,
    method: str | None,
    lat: float | None,
    lon: float | None,
    battery: int,
    seq: int,
) -> dict:
    """One e-lock event object (not yet encoded); position and method only when known."""
    ts = format_ts(np.array([t_ms + dev.skew_ms]), dev.ts_style)[0]
    body: dict = {"ts": ts, "event": event}
    if method is not None:
        body["method"] = method
    if lat is not None and lon is not None:
        body["lat"] = round(float(lat), 6)
        body["lon"] = round(float(lon), 6)
    body["battery_pct"] = int(battery)
    body["seq"] = int(seq)
    return _extras(dev, body)


def encode(body: dict | Sequence[dict]) -> bytes:
    """Compact JSON bytes (orjson keeps key order, so payloads are byte-for-byte repeatable).
    Copied to an exact-size object: orjson's own result holds a 4 KiB buffer, which for a
    fleet's queued messages multiplies memory twentyfold."""
    return bytes(memoryview(orjson.dumps(body)))
