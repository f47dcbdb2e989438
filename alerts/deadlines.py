"""Acknowledge and resolve deadlines (contract §5) and their per-shipper / per-trip overrides.

An SLA is ``{"critical": {"ack_min": 10, "resolve_min": 240}, "major": {...}, ...}``.
Layers are merged key by key, so a shipper may override only ``critical.ack_min`` and keep
every other default. Deadlines are stored on the alarm when it is raised, so a later SLA
change does not move the deadlines of alarms already open.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alerts.errors import ValidationError
from rules.events import Severity

MINUTE_MS = 60_000

DEFAULT_SLA: dict[str, dict[str, float]] = {
    Severity.CRITICAL.value: {"ack_min": 10, "resolve_min": 240},
    Severity.MAJOR.value: {"ack_min": 30, "resolve_min": 240},
    Severity.MINOR.value: {"ack_min": 12 * 60, "resolve_min": 24 * 60},
}

_FIELDS = ("ack_min", "resolve_min")
# Upper bounds (about 70 days / 2 years) keep due times far inside a 64-bit epoch-ms column.
_MAX_MIN = {"ack_min": 100_000, "resolve_min": 1_000_000}

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Deadline:
    """Minutes from ``raised_at`` to acknowledge and to resolve an alarm of one severity."""

    ack_min: float
    resolve_min: float

    def due(self, raised_at: int) -> tuple[int, int]:
        """``(ack_due, resolve_due)`` in epoch ms."""
        return (
            raised_at + round(self.ack_min * MINUTE_MS),
            raised_at + round(self.resolve_min * MINUTE_MS),
        )


def validate_sla(sla: Any) -> dict[str, dict[str, float]]:
    """Check an SLA object (``PUT /v1/shippers/{shipper}``) and return it normalised.

    Unknown severities or fields, and minutes that are not positive numbers, raise
    ``ValidationError``.
    """
    if not isinstance(sla, Mapping):
        raise ValidationError("sla must be an object keyed by severity")
    out: dict[str, dict[str, float]] = {}
    for severity, limits in sla.items():
        if severity not in DEFAULT_SLA:
            raise ValidationError(
                "unknown severity in sla", severity=severity, allowed=sorted(DEFAULT_SLA)
            )
        if not isinstance(limits, Mapping):
            raise ValidationError("sla entry must be an object", severity=severity)
        entry: dict[str, float] = {}
        for key, minutes in limits.items():
            if key not in _FIELDS:
                raise ValidationError("unknown sla field", field=key, allowed=list(_FIELDS))
            if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0:
                raise ValidationError("sla minutes must be a positive number", field=key)
            if not minutes <= _MAX_MIN[key]:
                raise ValidationError(f"sla {key} must be at most {_MAX_MIN[key]}", field=key)
            entry[key] = minutes
        out[severity] = entry
    return out


def merge_sla(*layers: Mapping[str, Any] | None) -> dict[str, Deadline]:
    """Deadlines per severity: contract defaults, then each layer in order (later wins).

    A layer that does not validate is ignored as a whole (logged): a broken shipper document
    must not stop alarms from being raised.
    """
    merged = {sev: dict(limits) for sev, limits in DEFAULT_SLA.items()}
    for layer in layers:
        if not layer:
            continue
        try:
            checked = validate_sla(layer)
        except ValidationError as exc:
            logger.warning("ignoring an invalid sla: %s", exc)
            continue
        for severity, limits in checked.items():
            merged[severity].update(limits)
    return {sev: Deadline(v["ack_min"], v["resolve_min"]) for sev, v in merged.items()}
