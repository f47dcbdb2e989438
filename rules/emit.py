"""Building engine events: deterministic episode keys, suppression of repeats, late marks.

Every alarm episode key is a pure function of event data (trip, type, the event time the
episode started, and the stop or device where the type is per stop or per device), so
re-running the same messages after a restart, a rewind or in replay yields the same keys;
``alerts`` opens at most one alarm per key. The emitter remembers per trip which keys, ends
and milestones it already emitted and drops repeats (a rewind re-runs messages on purpose).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rules.events import (
    AlarmSignal,
    AlarmType,
    AlarmWithdrawn,
    EngineEvent,
    EpisodeEnded,
    GeofenceChange,
    GeofenceTransition,
    Milestone,
    MilestoneKind,
    TripStatus,
    TripStatusChanged,
)
from rules.state import TripInfo

__all__ = ["LATE_AFTER_MS", "Emitter", "episode_key"]

LATE_AFTER_MS = 60_000
"""An alarm found from a message that reached us more than this after its ts is
``details.detected_late``."""


def plain(details: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``details`` with numpy scalars turned into Python numbers (JSON-ready)."""
    if not details:
        return {}
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in details.items()}


def episode_key(trip_id: str, alarm_type: AlarmType, *parts: object) -> str:
    """``trip:TYPE:part:...`` with integral floats written as integers."""
    text = [trip_id, alarm_type.value]
    for p in parts:
        text.append(str(int(p)) if isinstance(p, float) and p.is_integer() else str(p))
    return ":".join(text)


@dataclass(slots=True)
class Emitter:
    """Collects the events of one engine call.

    ``rewind`` marks a re-run after late data: every alarm it finds is ``detected_late``.
    """

    now_ms: int
    rewind: bool = False
    events: list[EngineEvent] = field(default_factory=list)
    ended_keys: set[str] = field(default_factory=set)

    def alarm(
        self,
        info: TripInfo,
        alarm_type: AlarmType,
        device_id: str,
        ts: int,
        episode: str,
        *,
        lat: float | None = None,
        lon: float | None = None,
        details: dict[str, Any] | None = None,
        arrival_ms: int | None = None,
    ) -> None:
        """Raise an alarm episode unless this trip already emitted ``episode``."""
        if episode in info.emitted:
            return
        info.emitted.add(episode)
        details = plain(details)
        arrival = self.now_ms if arrival_ms is None else arrival_ms
        if self.rewind or arrival - ts > LATE_AFTER_MS:
            details["detected_late"] = True
        self.events.append(
            AlarmSignal(
                type=alarm_type,
                trip_id=info.trip_id,
                shipper=info.shipper,
                device_id=device_id,
                ts=int(ts),
                episode=episode,
                lat=None if lat is None else float(lat),
                lon=None if lon is None else float(lon),
                details=details,
            )
        )

    def ended(
        self,
        info: TripInfo,
        alarm_type: AlarmType,
        episode: str,
        ts: int,
        details: dict[str, Any] | None = None,
    ) -> None:
        """The condition behind ``episode`` cleared (once per episode)."""
        self.ended_keys.add(episode)
        key = episode + "#end"
        if key in info.emitted:
            return
        info.emitted.add(key)
        self.events.append(
            EpisodeEnded(
                type=alarm_type,
                trip_id=info.trip_id,
                shipper=info.shipper,
                episode=episode,
                ts=int(ts),
                details=plain(details),
            )
        )

    def withdrawn(
        self,
        info: TripInfo,
        alarm_type: AlarmType,
        episode: str,
        ts: int,
        details: dict[str, Any] | None = None,
    ) -> None:
        """The alarm of ``episode`` was a false alarm after all (once per episode)."""
        key = episode + "#withdrawn"
        if key in info.emitted:
            return
        info.emitted.add(key)
        self.events.append(
            AlarmWithdrawn(
                type=alarm_type,
                trip_id=info.trip_id,
                shipper=info.shipper,
                episode=episode,
                ts=int(ts),
                details=plain(details),
            )
        )

    def geofence(
        self,
        info: TripInfo,
        change: str,
        ts: int,
        device_id: str,
        geofence_id: str,
        name: str | None,
        kind: str,
        *,
        lat: float | None = None,
        lon: float | None = None,
    ) -> None:
        """The trip entered or left a global geofence (once per fence, change and ts)."""
        key = f"geofence:{geofence_id}:{change}:{int(ts)}"
        if key in info.emitted:
            return
        info.emitted.add(key)
        self.events.append(
            GeofenceTransition(
                trip_id=info.trip_id,
                shipper=info.shipper,
                change=GeofenceChange(change),
                ts=int(ts),
                device_id=device_id,
                geofence_id=geofence_id,
                name=name,
                kind=kind,
                lat=lat,
                lon=lon,
            )
        )

    def milestone(
        self,
        info: TripInfo,
        kind: MilestoneKind,
        ts: int,
        *,
        stop_index: int | None = None,
        device_id: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """A trip milestone, once per (kind, stop)."""
        stop_id = None if stop_index is None else info.plan.stops[stop_index].stop_id
        key = milestone_key(kind, stop_id)
        if key in info.emitted:
            return
        info.emitted.add(key)
        self.events.append(
            Milestone(
                trip_id=info.trip_id,
                shipper=info.shipper,
                kind=kind,
                ts=int(ts),
                device_id=device_id,
                stop_id=stop_id,
                lat=None if lat is None else float(lat),
                lon=None if lon is None else float(lon),
                details=plain(details),
            )
        )

    def status(self, info: TripInfo, status: TripStatus, ts: int, reason: str) -> None:
        """A trip status change, once per status."""
        key = f"status:{status.value}"
        if key in info.emitted:
            return
        info.emitted.add(key)
        self.events.append(
            TripStatusChanged(
                trip_id=info.trip_id,
                shipper=info.shipper,
                status=status,
                ts=int(ts),
                reason=reason,
            )
        )


def milestone_key(kind: MilestoneKind | str, stop_id: str | None) -> str:
    """The suppression key of a milestone."""
    return f"milestone:{kind}:{stop_id or ''}"
