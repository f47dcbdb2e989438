"""Threshold names, defaults, validation and layering."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules import DEFAULT_RULES, RULE_NAMES, RULE_RANGES, RuleValueError, validate_rules
from rules.thresholds import merge_rules

RULES_DOC = Path(__file__).resolve().parent.parent / "docs" / "rules.md"
# A row of the thresholds table: | `name` | default | unit | low–high[, whole] | meaning |
_ROW = re.compile(
    r"^\| `(?P<name>[a-z_]+)` \| (?P<default>[0-9.,]+) \| (?P<unit>[^|]+?) \| "
    r"(?P<low>[0-9.,]+)–(?P<high>[0-9.,]+)(?P<whole>, whole)? \| (?P<meaning>[^|]+?) \|$"
)


def documented_thresholds() -> dict[str, re.Match[str]]:
    """The rows of the table under ``## Thresholds`` in docs/rules.md, by name."""
    section = RULES_DOC.read_text().split("\n## Thresholds\n")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    matches = [_ROW.match(line) for line in rows]
    bad = [line for line, m in zip(rows, matches, strict=True) if m is None]
    assert not bad, f"rows of the thresholds table in docs/rules.md not understood: {bad}"
    out = {m["name"]: m for m in matches if m is not None}
    assert len(out) == len(rows), "a threshold is listed twice in docs/rules.md"
    return out


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_defaults_are_the_contract_values() -> None:
    assert DEFAULT_RULES["corridor_m"] == 500
    assert DEFAULT_RULES["off_route_min_s"] == 120
    assert DEFAULT_RULES["off_route_min_fixes"] == 3
    assert DEFAULT_RULES["back_on_route_fixes"] == 2
    assert DEFAULT_RULES["stop_radius_m"] == 150
    assert DEFAULT_RULES["stop_speed_kmh"] == 5
    assert DEFAULT_RULES["stop_max_min"] == 30
    assert DEFAULT_RULES["signal_lost_s"] == 600
    assert DEFAULT_RULES["speed_limit_kmh"] == 90
    assert DEFAULT_RULES["speeding_min_s"] == 60
    assert DEFAULT_RULES["late_tolerance_min"] == 30
    assert DEFAULT_RULES["low_battery_pct"] == 15
    assert DEFAULT_RULES["max_dwell_min"] == 120
    assert DEFAULT_RULES["max_jump_kmh"] == 250
    assert DEFAULT_RULES["unlock_fix_max_age_s"] == 300
    assert set(RULE_RANGES) == set(RULE_NAMES) == set(DEFAULT_RULES)
    for name, value in DEFAULT_RULES.items():
        assert RULE_RANGES[name].low <= value <= RULE_RANGES[name].high
    with pytest.raises(TypeError):
        DEFAULT_RULES["corridor_m"] = 1  # type: ignore[index]


def test_every_documented_threshold_is_known_and_every_known_one_is_documented() -> None:
    rows = documented_thresholds()
    assert set(rows) - set(RULE_NAMES) == set(), "docs/rules.md lists thresholds the engine lacks"
    assert set(RULE_NAMES) - set(rows) == set(), "thresholds missing from docs/rules.md"
    for name, row in rows.items():
        assert _number(row["default"]) == DEFAULT_RULES[name], f"default of {name}"
        rng = RULE_RANGES[name]
        assert (_number(row["low"]), _number(row["high"])) == (rng.low, rng.high), name
        assert bool(row["whole"]) == rng.integer, f"whole-number flag of {name}"
        assert row["meaning"].strip(), f"{name} has no meaning in docs/rules.md"
    # Units follow the names' suffixes, so a table row cannot drift to another unit silently.
    suffix_units = {"_m": "m", "_s": "s", "_min": "min", "_kmh": "km/h", "_pct": "%"}
    for name, row in rows.items():
        unit = next((u for sfx, u in suffix_units.items() if name.endswith(sfx)), "fixes")
        assert row["unit"] == unit, f"unit of {name}"


def test_validation_messages() -> None:
    with pytest.raises(RuleValueError, match=r"unknown threshold.*corridor.*valid: corridor_m"):
        validate_rules({"corridor": 5})
    with pytest.raises(RuleValueError, match="must be a number"):
        validate_rules({"corridor_m": True})
    with pytest.raises(RuleValueError, match="must be a number"):
        validate_rules({"corridor_m": "500"})
    with pytest.raises(RuleValueError, match=r"in \[1, 100000\]"):
        validate_rules({"corridor_m": 0})
    with pytest.raises(RuleValueError, match="whole number"):
        validate_rules({"off_route_min_fixes": 2.5})
    with pytest.raises(RuleValueError, match="must be an object"):
        validate_rules([1])
    assert validate_rules(None) == {}
    assert validate_rules({"off_route_min_fixes": 4}) == {"off_route_min_fixes": 4.0}


def test_layers_later_wins() -> None:
    merged = merge_rules({"corridor_m": 1.0, "stop_max_min": 2.0}, None, {"corridor_m": 3.0})
    assert merged["corridor_m"] == 3.0 and merged["stop_max_min"] == 2.0
    assert merged["signal_lost_s"] == 600.0


@given(
    st.dictionaries(
        st.sampled_from([*RULE_NAMES, "bogus"]),
        st.one_of(
            st.floats(allow_nan=True), st.integers(), st.booleans(), st.text(max_size=3), st.none()
        ),
    )
)
def test_validation_never_crashes(rules: dict) -> None:
    try:
        out = validate_rules(rules)
    except RuleValueError as exc:
        assert str(exc)
    else:
        assert all(math.isfinite(v) for v in out.values())
