"""Which telemetry belongs to a trip: its devices, within its own time span.

Devices are reused: a GPS unit rides on an ``acme`` trip today and a ``pg`` trip next week.
Selecting a trip's telemetry by device and time alone shows one shipper the other's fixes
and lock events, so every read on behalf of a trip goes through ``device_windows``:

- the trip's span runs from its activation (``activated_at``, or a ``status: active``
  event; a trip never activated: its ``planned_start``) to its completion or cancellation
  (``completed_at`` / ``cancelled_at``, or the status event), or open-ended while it runs;
- a device's window is that span minus the spans of the device's *other* trips that began
  later within it: the engine gives a device's messages to the most recently activated
  active trip, so from then on the data is theirs (``rules.engine``'s ``_remap``).

The caller's ``from``/``to`` only narrow these windows, never widen them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

Window = tuple[int, int | None]  # inclusive since, inclusive until (None: open)

_ENDINGS = ("completed", "cancelled")


def _ms(value: Any) -> int | None:
    """Epoch ms from a stored time (int ms, or an RFC 3339 string as plans keep them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is not None:
                return int(moment.timestamp() * 1000)
    return None


def trip_span(trip: Mapping[str, Any], events: Iterable[Mapping[str, Any]] = ()) -> Window:
    """``(start, end)`` of a trip in epoch ms; ``end`` None while it has not ended.

    A trip with no usable start (never activated, no planned start) spans nothing: it
    starts "at the end of time" so that no telemetry is attributed to it."""
    status_ts: dict[str, list[int]] = {}
    for e in events:
        if e.get("kind") == "status" and isinstance(e.get("ts"), int):
            status_ts.setdefault(str(e.get("status")), []).append(int(e["ts"]))
    activated = _ms(trip.get("activated_at"))
    if activated is None and status_ts.get("active"):
        activated = min(status_ts["active"])
    start = activated if activated is not None else _ms(trip.get("planned_start"))
    end: int | None = None
    status = trip.get("status")
    if status in _ENDINGS:
        ends = [t for t in [_ms(trip.get(f"{status}_at")), *status_ts.get(str(status), [])] if t]
        end = max(ends) if ends else None
        if end is None and start is not None:
            end = start  # ended at an unknown time: nothing beyond its start is its own
    if start is None:
        return (2**62, 2**62)
    if end is not None and end < start:
        end = start
    return (start, end)


def _subtract(windows: list[Window], cut: Window) -> list[Window]:
    """``windows`` minus the closed interval ``cut`` (telemetry at ``cut``'s bounds is the
    later trip's)."""
    c0, c1 = cut
    out: list[Window] = []
    for w0, w1 in windows:
        if (w1 is not None and w1 < c0) or (c1 is not None and c1 < w0):
            out.append((w0, w1))
            continue
        if w0 < c0:
            out.append((w0, c0 - 1))
        if c1 is not None and (w1 is None or c1 < w1):
            out.append((c1 + 1, w1))
    return out


def device_windows(
    trip: Mapping[str, Any],
    events: Iterable[Mapping[str, Any]],
    others: Callable[[str], Sequence[tuple[Mapping[str, Any], Iterable[Mapping[str, Any]]]]],
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict[str, list[Window]]:
    """Per device of ``trip``: the windows of its telemetry that are this trip's.

    ``others(device_id)`` gives the device's trips (documents with their events); the trip
    itself among them is skipped. ``since_ms``/``until_ms`` narrow the result."""
    events = list(events)
    own_start, end = trip_span(trip, events)
    start = own_start
    if since_ms is not None:
        start = max(start, since_ms)
    if until_ms is not None:
        end = until_ms if end is None else min(end, until_ms)
    result: dict[str, list[Window]] = {}
    for device in dict.fromkeys(str(d) for d in trip.get("devices") or []):
        windows: list[Window] = [] if end is not None and end < start else [(start, end)]
        for other, other_events in others(device):
            if other.get("trip_id") == trip.get("trip_id"):
                continue
            o_start, o_end = trip_span(other, other_events)
            if o_start > own_start or (o_start == own_start and _later(other, trip)):
                windows = _subtract(windows, (o_start, o_end))
        if windows:
            result[device] = windows
    return result


def _later(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Tie-break of two trips starting at the same instant: the later created owns it."""
    return (a.get("created_at") or 0, str(a.get("trip_id"))) > (
        b.get("created_at") or 0,
        str(b.get("trip_id")),
    )
