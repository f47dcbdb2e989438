"""What the rule engine emits: alarm signals, episode ends, milestones, trip status changes,
position updates. Pure values; ``alerts`` turns them into stored alarms, webhooks and the
live feed. Times are epoch milliseconds; ``ts`` is always event (device) time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AlarmType(StrEnum):
    ROUTE_DEVIATION = "ROUTE_DEVIATION"
    LONG_STOP = "LONG_STOP"
    DWELL_OVERTIME = "DWELL_OVERTIME"
    UNAUTHORIZED_UNLOCK = "UNAUTHORIZED_UNLOCK"
    UNLOCK_OUT_OF_SEQUENCE = "UNLOCK_OUT_OF_SEQUENCE"
    LOCK_TAMPER = "LOCK_TAMPER"
    SIGNAL_LOST = "SIGNAL_LOST"
    SPEEDING = "SPEEDING"
    LATE_ARRIVAL = "LATE_ARRIVAL"
    LOW_BATTERY = "LOW_BATTERY"
    RISK_ZONE_ENTRY = "RISK_ZONE_ENTRY"


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"


SEVERITY: dict[AlarmType, Severity] = {
    AlarmType.ROUTE_DEVIATION: Severity.MAJOR,
    AlarmType.LONG_STOP: Severity.MAJOR,
    AlarmType.DWELL_OVERTIME: Severity.MINOR,
    AlarmType.UNAUTHORIZED_UNLOCK: Severity.CRITICAL,
    AlarmType.UNLOCK_OUT_OF_SEQUENCE: Severity.MAJOR,
    AlarmType.LOCK_TAMPER: Severity.CRITICAL,
    AlarmType.SIGNAL_LOST: Severity.MAJOR,
    AlarmType.SPEEDING: Severity.MINOR,
    AlarmType.LATE_ARRIVAL: Severity.MAJOR,
    AlarmType.LOW_BATTERY: Severity.MINOR,
    AlarmType.RISK_ZONE_ENTRY: Severity.MAJOR,
}


class MilestoneKind(StrEnum):
    SEALED = "sealed"
    DEPARTED = "departed"
    ARRIVED = "arrived"
    UNSEALED = "unsealed"
    LEFT = "left"
    COMPLETED = "completed"


class TripStatus(StrEnum):
    PLANNED = "planned"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class AlarmSignal:
    """A rule found a new alarm episode. ``episode`` is unique per (trip, type, episode):
    ``alerts`` opens at most one alarm per episode key, so re-emitting is harmless."""

    type: AlarmType
    trip_id: str
    shipper: str
    device_id: str
    ts: int
    episode: str
    lat: float | None = None
    lon: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.type]


@dataclass(frozen=True, slots=True)
class EpisodeEnded:
    """The condition behind an episode cleared (e.g. back on route, moving again)."""

    type: AlarmType
    trip_id: str
    shipper: str
    episode: str
    ts: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlarmWithdrawn:
    """Late data showed that the alarm of ``episode`` should never have been raised (a
    LATE_ARRIVAL whose stop was in fact entered in time): ``alerts`` resolves it as
    ``false_alarm`` by ``engine`` with ``details.withdrawn``."""

    type: AlarmType
    trip_id: str
    shipper: str
    episode: str
    ts: int
    details: dict[str, Any] = field(default_factory=dict)


class GeofenceChange(StrEnum):
    ENTERED = "entered"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class GeofenceTransition:
    """An active trip entered or left a global geofence of kind depot, consignee or custom
    (membership with hysteresis, CONTRACT §3): ``geofence.entered`` / ``geofence.exited``."""

    trip_id: str
    shipper: str
    change: GeofenceChange
    ts: int
    device_id: str
    geofence_id: str
    name: str | None
    kind: str
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class Milestone:
    trip_id: str
    shipper: str
    kind: MilestoneKind
    ts: int
    device_id: str | None = None
    stop_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TripStatusChanged:
    trip_id: str
    shipper: str
    status: TripStatus
    ts: int
    reason: str


@dataclass(slots=True, unsafe_hash=True)  # one per live fix: not frozen (see telemetry.models.Fix)
class PositionUpdate:
    """Latest position of a device for the live feed (one per device per batch).

    ``state`` is one of ``on_route``, ``off_route``, ``stopped``, ``idle`` (no active trip)."""

    device_id: str
    trip_id: str | None
    shipper: str | None
    ts: int
    lat: float
    lon: float
    speed_kmh: float | None
    state: str
    distance_to_route_m: float | None = None


EngineEvent = (
    AlarmSignal
    | EpisodeEnded
    | AlarmWithdrawn
    | Milestone
    | GeofenceTransition
    | TripStatusChanged
    | PositionUpdate
)
