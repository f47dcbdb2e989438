from __future__ import annotations

import pytest

from alerts import Deadline, ValidationError, merge_sla, validate_sla

MIN = 60_000


def test_contract_defaults() -> None:
    sla = merge_sla()
    assert sla["critical"] == Deadline(10, 240)
    assert sla["major"] == Deadline(30, 240)
    assert sla["minor"] == Deadline(12 * 60, 24 * 60)
    assert sla["major"].due(1_000) == (1_000 + 30 * MIN, 1_000 + 240 * MIN)


def test_layers_override_field_by_field_later_wins() -> None:
    service = {"minor": {"ack_min": 60}}
    shipper = {"critical": {"ack_min": 5, "resolve_min": 120}, "minor": {"resolve_min": 600}}
    trip = {"critical": {"ack_min": 2}}
    sla = merge_sla(service, shipper, trip)
    assert sla["critical"] == Deadline(2, 120)
    assert sla["major"] == Deadline(30, 240)
    assert sla["minor"] == Deadline(60, 600)


def test_invalid_layer_is_ignored_not_fatal() -> None:
    sla = merge_sla({"critical": {"ack_min": -1}}, None, {})
    assert sla["critical"] == Deadline(10, 240)


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"urgent": {"ack_min": 5}},
        {"critical": 5},
        {"critical": {"ack_minutes": 5}},
        {"critical": {"ack_min": 0}},
        {"critical": {"ack_min": True}},
        {"critical": {"ack_min": "5"}},
    ],
)
def test_validate_sla_refuses(bad: object) -> None:
    with pytest.raises(ValidationError):
        validate_sla(bad)


def test_validate_sla_accepts_partial() -> None:
    assert validate_sla({"major": {"resolve_min": 90.5}}) == {"major": {"resolve_min": 90.5}}
