"""Engine values for device messages (contract §2).

Times are integer epoch milliseconds (UTC). ``seq`` is ``None`` when the device sent none.
``extra`` keeps unknown payload fields (they are stored, never rejected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class LockEventType(StrEnum):
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    TAMPER = "tamper"
    ROPE_CUT = "rope_cut"
    FORCED_OPEN = "forced_open"
    LOW_BATTERY = "low_battery"
    HEARTBEAT = "heartbeat"


class UnlockMethod(StrEnum):
    RFID = "rfid"
    PASSWORD = "password"
    REMOTE = "remote"
    BLUETOOTH = "bluetooth"
    KEY = "key"


class DeadLetterReason(StrEnum):
    BAD_JSON = "bad_json"
    SCHEMA = "schema"
    OUT_OF_RANGE = "out_of_range"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    TOO_LARGE = "too_large"
    FUTURE_TS = "future_ts"
    BAD_TOPIC = "bad_topic"


class MessageKind(StrEnum):
    POSITION = "position"
    LOCK = "lock"


# Fix and LockEvent are made once or twice per message on the hot path: not frozen (a frozen
# dataclass's __init__ sets each field through object.__setattr__, 4x the cost), but hashable
# by value as before (unsafe_hash); nothing mutates a record once it is made.
@dataclass(slots=True, unsafe_hash=True)
class Fix:
    """One GPS position report."""

    device_id: str
    ts: int
    lat: float
    lon: float
    speed_kmh: float | None = None
    heading_deg: float | None = None
    hdop: float | None = None
    sats: int | None = None
    battery_pct: float | None = None
    seq: int | None = None
    received_at: int = 0
    extra: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(slots=True, unsafe_hash=True)
class LockEvent:
    """One e-lock event."""

    device_id: str
    ts: int
    event: LockEventType
    method: UnlockMethod | None = None
    lat: float | None = None
    lon: float | None = None
    battery_pct: float | None = None
    seq: int | None = None
    received_at: int = 0
    extra: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (or one element of a backlog) that could not be accepted."""

    topic: str
    payload: bytes  # truncated at 64 KiB
    received_at: int
    reason: DeadLetterReason
    detail: str
    device_id: str | None = None


@dataclass(slots=True)
class ParsedMessage:
    """What one MQTT message turned into."""

    fixes: list[Fix] = field(default_factory=list)
    lock_events: list[LockEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
