"""Malformed trip documents are refused with TripPlanError, never a crash in the engine."""

from __future__ import annotations

from typing import Any

import pytest

from rules import Engine, TripPlanError
from tests.tracks import STRAIGHT, trip_doc


@pytest.mark.parametrize("route", [None, [[0.0, 0.0], [1.0, 1.0]], "LineString"])
def test_a_route_that_is_not_an_object_is_a_plan_error(route: Any) -> None:
    # The document digest once called route.get() on these (AttributeError).
    engine = Engine()
    doc = {**trip_doc(STRAIGHT), "route": route}
    with pytest.raises(TripPlanError, match="route"):
        engine.upsert_trip(doc)
    assert engine.device_trip(doc["devices"][0]) is None


def test_a_missing_route_is_a_plan_error() -> None:
    doc = trip_doc(STRAIGHT)
    del doc["route"]
    with pytest.raises(TripPlanError, match="route"):
        Engine().upsert_trip(doc)
