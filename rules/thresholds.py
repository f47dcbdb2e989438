"""Rule thresholds: their names, defaults, sane ranges, and how layers combine.

The names are the ones in back-quotes in CONTRACT §4 plus the few the engine adds
(``off_route_min_fixes``, ``back_on_route_fixes``, ``stop_speed_kmh``, ``speeding_min_s``,
``low_battery_clear_pct``, ``max_jump_kmh``, ``unlock_fix_max_age_s``, ``unlock_gps_wait_s``;
``fence_exit_margin_m`` and
``lock_gps_disagree_m`` are the contract's own). Effective value for a
trip, highest first: replay overrides > ``trip.rules`` > the trip's top-level fields
(``corridor_m``; per-stop ``max_dwell_min``) > the shipper's rules > engine defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from rules.errors import RuleValueError

__all__ = [
    "DEFAULT_RULES",
    "RULE_NAMES",
    "RULE_RANGES",
    "RuleRange",
    "merge_rules",
    "validate_rules",
]


@dataclass(frozen=True, slots=True)
class RuleRange:
    """Allowed values of one threshold (inclusive bounds)."""

    low: float
    high: float
    integer: bool = False


_DEFAULTS: dict[str, float] = {
    "corridor_m": 500.0,
    "off_route_min_s": 120.0,
    "off_route_min_fixes": 3.0,
    "back_on_route_fixes": 2.0,
    "stop_radius_m": 150.0,
    "stop_speed_kmh": 5.0,
    "stop_max_min": 30.0,
    "signal_lost_s": 600.0,
    "speed_limit_kmh": 90.0,
    "speeding_min_s": 60.0,
    "late_tolerance_min": 30.0,
    "low_battery_pct": 15.0,
    "low_battery_clear_pct": 20.0,
    "max_dwell_min": 120.0,
    "max_jump_kmh": 250.0,
    "unlock_fix_max_age_s": 300.0,
    "fence_exit_margin_m": 50.0,
    "lock_gps_disagree_m": 1000.0,
    "unlock_gps_wait_s": 120.0,
}

DEFAULT_RULES: Mapping[str, float] = MappingProxyType(_DEFAULTS)
"""Engine defaults (CONTRACT §4); read-only."""

RULE_RANGES: Mapping[str, RuleRange] = MappingProxyType(
    {
        "corridor_m": RuleRange(1.0, 100_000.0),
        "off_route_min_s": RuleRange(0.0, 86_400.0),
        "off_route_min_fixes": RuleRange(1.0, 1_000.0, integer=True),
        "back_on_route_fixes": RuleRange(1.0, 1_000.0, integer=True),
        "stop_radius_m": RuleRange(1.0, 10_000.0),
        "stop_speed_kmh": RuleRange(0.0, 200.0),
        "stop_max_min": RuleRange(0.0, 10_080.0),
        "signal_lost_s": RuleRange(1.0, 7 * 86_400.0),
        "speed_limit_kmh": RuleRange(1.0, 500.0),
        "speeding_min_s": RuleRange(0.0, 86_400.0),
        "late_tolerance_min": RuleRange(0.0, 10_080.0),
        "low_battery_pct": RuleRange(0.0, 100.0),
        "low_battery_clear_pct": RuleRange(0.0, 100.0),
        "max_dwell_min": RuleRange(0.0, 43_200.0),
        "max_jump_kmh": RuleRange(10.0, 5_000.0),
        "unlock_fix_max_age_s": RuleRange(0.0, 86_400.0),
        "fence_exit_margin_m": RuleRange(0.0, 10_000.0),
        "lock_gps_disagree_m": RuleRange(1.0, 1_000_000.0),
        "unlock_gps_wait_s": RuleRange(0.0, 86_400.0),
    }
)

RULE_NAMES: tuple[str, ...] = tuple(_DEFAULTS)
"""Every threshold name, in a fixed order (the column order of the engine's rule table)."""


def validate_rules(rules: object, where: str = "rules") -> dict[str, float]:
    """Check a ``{name: number}`` mapping and return it as floats.

    Unknown names, non-numbers (booleans included) and values outside the threshold's range
    raise RuleValueError; the message lists the valid names or the allowed range.
    """
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise RuleValueError(f"{where} must be an object of threshold values")
    out: dict[str, float] = {}
    unknown = sorted(str(k) for k in rules if k not in RULE_RANGES)
    if unknown:
        raise RuleValueError(
            f"{where}: unknown threshold(s) {', '.join(unknown)}; valid: {', '.join(RULE_NAMES)}"
        )
    for name, value in rules.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RuleValueError(f"{where}.{name} must be a number, got {value!r}")
        v = float(value)
        rng = RULE_RANGES[name]
        if not math.isfinite(v) or not rng.low <= v <= rng.high:
            raise RuleValueError(
                f"{where}.{name} must be in [{rng.low:g}, {rng.high:g}], got {v:g}"
            )
        if rng.integer and v != int(v):
            raise RuleValueError(f"{where}.{name} must be a whole number, got {v:g}")
        out[name] = v
    return out


def merge_rules(*layers: Mapping[str, float] | None) -> dict[str, float]:
    """Combine threshold layers, lowest priority first (later layers win), over the defaults."""
    out = dict(_DEFAULTS)
    for layer in layers:
        if layer:
            out.update(layer)
    return out
