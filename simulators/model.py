"""The simulators' public values: one message to publish, one simulated trip."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.script import TruckScript


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT message: published on ``{prefix}/{device_id}/{topic_suffix}`` when the
    simulated clock reaches ``at_ms`` (event time; a backlog is sent later than its fixes)."""

    topic_suffix: str  # "position" | "lock"
    device_id: str
    payload: bytes
    at_ms: int

    def topic(self, prefix: str = "devices") -> str:
        """The full topic under ``prefix``."""
        return f"{prefix}/{self.device_id}/{self.topic_suffix}"


@dataclass(eq=False)
class SimTrip:
    """A simulated truck trip: what to register, what the devices send, what must come out.

    - ``trip``: the document for ``POST /v1/trips`` (contract §3 shape).
    - ``devices``: ``{"device_id", "kind": "gps"|"lock", "shipper", "topics"}``; a combined
      GPS e-lock has kind ``lock`` and both topics.
    - ``geofences``: extra GeoJSON Features for ``POST /v1/geofences`` (e.g. a rest area).
    - ``expected``: the alarms the trip must raise under the contract's default thresholds:
      ``{"type", "trip_id", "device_id" (when one device is to blame), "details": {subset}}``;
      empty for a clean trip.
    - ``expected_dead_letters``: ``{"device_id", "topic_suffix", "reason"}`` per dead letter.
    - ``marks``: event times (epoch ms) of interest: ``sealed``, ``departed``,
      ``arrived:S1``, ``incident``, ...
    - ``messages`` (sorted by ``at_ms``) are generated from a small script on first access;
      :meth:`iter_messages` streams them without keeping them (large fleets).
    """

    trip: dict[str, Any]
    devices: list[dict[str, Any]]
    expected: list[dict[str, Any]]
    geofences: list[dict[str, Any]]
    scenario: str
    expected_dead_letters: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    script: TruckScript | None = field(default=None, repr=False)

    @property
    def trip_id(self) -> str:
        """The trip's id."""
        return str(self.trip["trip_id"])

    @property
    def first_at_ms(self) -> int:
        """Publish time of the trip's first message."""
        return self.script.on_ms if self.script is not None else 0

    def iter_messages(self) -> Iterator[SimMessage]:
        """The trip's messages in ``at_ms`` order, generated lazily (same bytes every time)."""
        if "messages" in self.__dict__:
            return iter(self.__dict__["messages"])
        if self.script is None:
            return iter(())
        return self.script.iter_messages()

    @cached_property
    def messages(self) -> list[SimMessage]:
        """All the trip's messages, sorted by ``at_ms``."""
        return list(self.iter_messages())
