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

CONTRACT = Path("/work/shared/spec/CONTRACT.md")


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


@pytest.mark.skipif(not CONTRACT.exists(), reason="contract not available")
def test_every_back_quoted_threshold_of_the_contract_is_known() -> None:
    section = CONTRACT.read_text().split("## 4. Alarms")[1].split("## 5.")[0]
    names = set(re.findall(r"`([a-z_]+_(?:m|s|min|kmh|pct))`", section)) - {"battery_pct"}
    assert names and names <= set(RULE_NAMES)


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
