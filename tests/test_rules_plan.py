"""Trip documents: what parse_trip accepts, and a clear TripPlanError for everything else."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import TripPlanError, parse_time_ms, parse_trip
from rules.geometry import TripGeometry
from tests.tracks import STRAIGHT, T0, square, trip_doc


def contract_example() -> dict[str, Any]:
    return {
        "trip_id": "PG-2026-000123",
        "shipper": "pg",
        "vehicle": "沪A12345",
        "devices": ["lock-0001", "gps-0001"],
        "origin": {
            "name": "Taicang DC",
            "geometry": {"type": "Point", "coordinates": [121.1, 31.5]},
            "radius_m": 300,
        },
        "route": {
            "type": "LineString",
            "coordinates": [[121.1, 31.5], [121.3, 31.3], [121.47, 31.23]],
        },
        "corridor_m": 500,
        "stops": [
            {
                "stop_id": "S1",
                "name": "Consignee A",
                "geometry": {"type": "Point", "coordinates": [121.47, 31.23]},
                "radius_m": 200,
                "eta": "2026-11-22T14:00:00+08:00",
                "max_dwell_min": 120,
                "unlock_allowed": True,
            }
        ],
        "planned_start": "2026-11-22T08:00:00+08:00",
        "rules": {"stop_max_min": 45},
    }


def test_contract_example() -> None:
    plan = parse_trip(contract_example())
    assert plan.trip_id == "PG-2026-000123" and plan.devices == ("lock-0001", "gps-0001")
    assert plan.planned_start_ms == parse_time_ms("2026-11-22T00:00:00Z", "t")
    assert plan.stops[0].eta_ms == parse_time_ms("2026-11-22T06:00:00Z", "t")
    assert plan.origin.radius_m == 300 and plan.corridor_m == 500
    assert plan.rules == {"stop_max_min": 45.0}
    assert (
        plan.route.shape == (3, 2) and plan.stop_index("S1") == 0 and plan.stop_index("x") is None
    )


def test_defaults_and_polygons() -> None:
    doc = trip_doc(STRAIGHT)
    del doc["stops"][0]["radius_m"]
    doc["origin"] = {"geometry": square(*STRAIGHT.point(0.0), 300.0)["geometry"]}
    plan = parse_trip(doc)
    assert plan.stops[0].fence.radius_m == 200.0 and plan.stops[0].unlock_allowed is True
    assert plan.origin.geometry["type"] == "Polygon"
    assert parse_trip({**doc, "stops": []}).stops == ()


def test_times() -> None:
    assert parse_time_ms("2026-11-22T08:00:00Z", "t") == T0
    assert parse_time_ms("2026-11-22T16:00:00+08:00", "t") == T0
    assert parse_time_ms("2026-11-22T08:00:00.250z", "t") == T0 + 250
    assert parse_time_ms(T0, "t") == T0
    for bad in ("2026-11-22T08:00:00", "yesterday", "", True, None, 1.5):
        with pytest.raises(TripPlanError, match="t "):
            parse_time_ms(bad, "t")


def mutate(path: list, value: Any) -> dict[str, Any]:
    doc = contract_example()
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["trip_id"], "", "trip_id"),
        (["shipper"], None, "shipper"),
        (["devices"], [], "devices"),
        (["devices"], ["ok", "bad id"], r"devices\[1\]"),
        (["devices"], ["a", "a"], "twice"),
        (["devices"], ["x" * 65], r"devices\[0\]"),
        (["route"], {"type": "Polygon", "coordinates": []}, "LineString"),
        (["route", "coordinates"], [[121.0, 31.0]], "at least 2"),
        (["route", "coordinates"], [[31.0, 121.0], [31.1, 121.1]], "out of range"),
        (["route", "coordinates"], [[121.0, 31.0], [121.0, 31.0]], "zero length"),
        (["origin"], KeyError, "origin"),
        (
            ["origin", "geometry"],
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            "Point or a Polygon",
        ),
        (["origin", "radius_m"], -5, "radius_m"),
        (
            ["origin", "geometry"],
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
            "not a valid Polygon",
        ),
        (["stops", 0, "stop_id"], 7, "stop_id"),
        (["stops", 0, "eta"], "soon", r"stops\[0\].eta"),
        (["stops", 0, "unlock_allowed"], "yes", "unlock_allowed"),
        (["stops", 0, "max_dwell_min"], -1, "max_dwell_min"),
        (["stops"], "S1", "stops must be a list"),
        (["planned_start"], KeyError, "planned_start"),
        (["planned_start"], "08:00", "planned_start"),
        (["corridor_m"], 0, "corridor_m"),
        (["rules"], {"stop_max": 45}, "valid: corridor_m"),
        (["rules"], {"stop_max_min": -1}, "stop_max_min"),
    ],
)
def test_rejections_name_the_field(path: list, value: Any, message: str) -> None:
    with pytest.raises(TripPlanError, match=message):
        parse_trip(mutate(path, value))


def test_duplicate_stop_ids() -> None:
    doc = contract_example()
    doc["stops"].append(copy.deepcopy(doc["stops"][0]))
    with pytest.raises(TripPlanError, match="used twice"):
        parse_trip(doc)


def test_not_an_object() -> None:
    with pytest.raises(TripPlanError):
        parse_trip([])  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    ["trip_id"],
    ["shipper"],
    ["devices"],
    ["origin"],
    ["origin", "geometry"],
    ["route"],
    ["route", "coordinates"],
    ["stops"],
    ["stops", 0],
    ["stops", 0, "geometry"],
    ["stops", 0, "eta"],
    ["planned_start"],
    ["rules"],
    ["corridor_m"],
    ["origin", "radius_m"],
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FIELDS), json_values)
def test_any_mutation_is_a_plan_or_a_trip_plan_error(path: list, value: Any) -> None:
    try:
        plan = parse_trip(mutate(path, value))
    except TripPlanError as exc:
        assert str(exc)
    else:  # whatever parses, the geometry kernel accepts too
        TripGeometry().add_trip(plan)
