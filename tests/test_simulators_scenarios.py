"""The scenario catalogue: every scenario builds, repeats byte for byte, parses clean, and
raises exactly its expected alarms under a reference reading of the contract."""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from datetime import datetime

import numpy as np
import orjson
import pytest
import shapely
from pyproj import CRS, Geod, Transformer

from simulators import (
    GNSS_INCIDENTS,
    INCIDENTS,
    NEEDS_V2_ENGINE,
    NOISE_KINDS,
    ScenarioError,
    SimTrip,
    build_fleet,
    build_scenario,
    scenario_names,
)
from simulators.reference import evaluate, parse_ts
from telemetry.parse import parse_message

START = 1_795_334_400_000  # 2026-11-22T08:00:00Z
SEEDS = (0, 1, 2)
GEOD = Geod(ellps="WGS84")


@functools.cache
def trip(name: str, seed: int = 0) -> SimTrip:
    return build_scenario(name, seed=seed, start_ms=START)


@functools.cache
def outcome(name: str, seed: int = 0):
    return evaluate(trip(name, seed))


def payloads(t: SimTrip) -> list[dict]:
    """Every accepted element of every message, with its device, topic and publish time."""
    out = []
    for m in t.iter_messages():
        try:
            doc = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            continue
        for el in doc if isinstance(doc, list) else [doc]:
            out.append({"_device": m.device_id, "_topic": m.topic_suffix, "_at": m.at_ms, **el})
    return out


def utm(lon: float, lat: float) -> Transformer:
    zone = int((lon + 180) // 6) + 1
    crs = CRS.from_dict({"proj": "utm", "zone": zone, "south": lat < 0})
    return Transformer.from_crs("EPSG:4326", crs, always_xy=True)


def test_catalogue_names() -> None:
    names = scenario_names()
    assert names[0] == "normal"
    assert set(INCIDENTS) == set(names) - {"normal"}
    for required in [
        "route_deviation",
        "short_excursion",
        "long_stop",
        "rest_area_stop",
        "unlock_en_route",
        "unlock_no_position",
        "wrong_consignee",
        "tamper",
        "rope_cut",
        "forced_open",
        "signal_loss_backlog",
        "gps_jump",
        "speeding",
        "dwell_overtime",
        "late_arrival",
        "low_battery",
        "duplicates_out_of_order",
        "malformed",
    ]:
        assert required in names


def test_unknown_scenario_is_a_clear_error() -> None:
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'"):
        build_scenario("nope", start_ms=START)


@pytest.mark.parametrize("name", scenario_names())
def test_same_seed_same_bytes(name: str) -> None:
    a = build_scenario(name, seed=5, start_ms=START)
    b = build_scenario(name, seed=5, start_ms=START)
    assert a.trip == b.trip and a.expected == b.expected and a.devices == b.devices
    assert [(m.topic_suffix, m.device_id, m.payload, m.at_ms) for m in a.messages] == [
        (m.topic_suffix, m.device_id, m.payload, m.at_ms) for m in b.messages
    ]
    c = build_scenario(name, seed=6, start_ms=START)
    assert [m.payload for m in a.messages] != [m.payload for m in c.messages]


@pytest.mark.parametrize("name", scenario_names())
def test_trip_document_shape(name: str) -> None:
    t = trip(name)
    doc = t.trip
    assert set(doc) == {
        "trip_id", "shipper", "vehicle", "devices", "origin", "route", "corridor_m",
        "stops", "planned_start", "rules",
    }  # fmt: skip
    assert doc["route"]["type"] == "LineString" and len(doc["route"]["coordinates"]) > 100
    assert doc["corridor_m"] == 500 and doc["origin"]["geometry"]["type"] == "Point"
    assert [s["stop_id"] for s in doc["stops"]] == [f"S{i + 1}" for i in range(len(doc["stops"]))]
    for s in doc["stops"]:
        assert s["radius_m"] == 200 and s["unlock_allowed"] is True and s["max_dwell_min"] == 120
        assert datetime.fromisoformat(s["eta"]).utcoffset() is not None
    assert sorted(doc["devices"]) == sorted(d["device_id"] for d in t.devices)
    for d in t.devices:
        assert d["kind"] in ("gps", "lock") and d["shipper"] == "pg"
    assert parse_ts(doc["planned_start"]) >= START
    ats = [m.at_ms for m in t.messages]
    assert ats == sorted(ats) and ats[0] >= START
    orjson.dumps(doc)  # serialisable as is


@pytest.mark.parametrize(("name", "seed"), list(itertools.product(scenario_names(), SEEDS)))
def test_expected_alarms_match_the_reference(name: str, seed: int) -> None:
    t = trip(name, seed)
    got = outcome(name, seed)
    assert Counter(a["type"] for a in got.alarms) == Counter(e["type"] for e in t.expected)
    for exp in t.expected:
        assert exp["trip_id"] == t.trip_id
        match = [a for a in got.alarms if a["type"] == exp["type"]]
        if "device_id" in exp:
            assert match[0]["device_id"] == exp["device_id"]
        for key, value in exp["details"].items():
            assert match[0]["details"].get(key) == value
    # every trip is sealed at the origin and completed by the final unseal
    assert got.active_from is not None and got.active_from < parse_ts(t.trip["planned_start"])
    assert got.completed_at == t.marks["unsealed"]


@pytest.mark.parametrize(("name", "seed"), list(itertools.product(scenario_names(), SEEDS)))
def test_messages_parse_with_the_ingest_parser(name: str, seed: int) -> None:
    t = trip(name, seed)
    reasons: Counter[str] = Counter()
    records = 0
    for m in t.iter_messages():
        parsed = parse_message(m.topic(), m.payload, m.at_ms)
        records += len(parsed.fixes) + len(parsed.lock_events)
        reasons.update(d.reason.value for d in parsed.dead_letters)
    assert records > 50
    expected = Counter(d["reason"] for d in t.expected_dead_letters)
    # unregistered devices are ingest's call, not the parser's
    expected.pop("unknown_device", None)
    assert reasons == expected
    ref = Counter(d["reason"] for d in outcome(name, seed).dead_letters)
    assert ref == Counter(d["reason"] for d in t.expected_dead_letters)


def test_malformed_lists_every_reason() -> None:
    reasons = {d["reason"] for d in trip("malformed").expected_dead_letters}
    assert reasons == {
        "bad_json", "schema", "out_of_range", "topic_mismatch", "unknown_device",
        "too_large", "future_ts", "bad_topic",
    }  # fmt: skip
    assert all(not trip(n).expected_dead_letters for n in scenario_names() if n != "malformed")


@pytest.mark.parametrize("seed", range(6))
def test_normal_trip_is_clean(seed: int) -> None:
    """Within the corridor, under the speed limits, reporting often, batteries fine, stops
    reached before their ETA, consignee dwell short: judged with pyproj/shapely in UTM."""
    t = trip("normal", seed)
    doc = t.trip
    coords = np.asarray(doc["route"]["coordinates"])
    tf = utm(*coords[0])
    line = shapely.LineString(np.column_stack(tf.transform(coords[:, 0], coords[:, 1])))
    els = payloads(t)
    fixes = [e for e in els if e["_topic"] == "position"]
    lon = np.array([f["lon"] for f in fixes])
    lat = np.array([f["lat"] for f in fixes])
    dist = shapely.distance(shapely.points(*tf.transform(lon, lat)), line)
    assert dist.max() < 30.0  # a few metres of noise, far inside 500 m
    assert max(f["speed_kmh"] for f in fixes) <= 85.0
    assert min(e["battery_pct"] for e in els) > 20
    for dev in {f["_device"] for f in fixes}:
        ts = sorted(parse_ts(f["ts"]) for f in fixes if f["_device"] == dev)
        assert np.diff(ts).max() < 60_000
        seqs = [
            f["seq"]
            for f in sorted(
                (f for f in fixes if f["_device"] == dev), key=lambda f: parse_ts(f["ts"])
            )
        ]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # implied speeds between consecutive fixes stay truck-like
    order = np.argsort([parse_ts(f["ts"]) for f in fixes])
    ts = np.array([parse_ts(fixes[i]["ts"]) for i in order])
    _, _, d = GEOD.inv(lon[order][:-1], lat[order][:-1], lon[order][1:], lat[order][1:])
    assert (np.asarray(d) / np.maximum(np.diff(ts) / 1000, 1) * 3.6).max() < 110
    # each stop is entered before its ETA
    for stop in doc["stops"]:
        sl, sa = stop["geometry"]["coordinates"]
        _, _, ds = GEOD.inv(lon, lat, np.full_like(lon, sl), np.full_like(lat, sa))
        inside = [parse_ts(f["ts"]) for f, dd in zip(fixes, ds, strict=True) if dd <= 200]
        assert inside and min(inside) < parse_ts(stop["eta"])
        assert (max(inside) - min(inside)) / 60_000 < 60  # well under max_dwell_min
    assert not t.expected and not outcome("normal", seed).alarms


@pytest.mark.parametrize("name", ["normal", "wrong_consignee", "dwell_overtime", "tamper"])
def test_seal_at_origin_unseal_at_consignees(name: str) -> None:
    t = trip(name)
    doc = t.trip
    locks = sorted(
        (e for e in payloads(t) if e["_topic"] == "lock"), key=lambda e: parse_ts(e["ts"])
    )
    custody = [e for e in locks if e["event"] in ("locked", "unlocked")]
    first = custody[0]
    olon, olat = doc["origin"]["geometry"]["coordinates"]
    assert first["event"] == "locked"
    assert GEOD.inv(first["lon"], first["lat"], olon, olat)[2] <= doc["origin"]["radius_m"]
    assert parse_ts(first["ts"]) < parse_ts(doc["planned_start"])
    unlocks = [e for e in custody if e["event"] == "unlocked"]
    assert len(unlocks) == len(doc["stops"])
    for u in unlocks:
        assert u["method"] == "rfid"
        near = [
            s["stop_id"]
            for s in doc["stops"]
            if GEOD.inv(u["lon"], u["lat"], *s["geometry"]["coordinates"])[2] <= s["radius_m"]
        ]
        assert len(near) == 1
    last = doc["stops"][-1]
    assert (
        GEOD.inv(unlocks[-1]["lon"], unlocks[-1]["lat"], *last["geometry"]["coordinates"])[2] < 200
    )
    # the lock is sealed again before leaving an intermediate consignee
    assert [e["event"] for e in custody] == ["locked"] + ["unlocked", "locked"] * (
        len(doc["stops"]) - 1
    ) + ["unlocked"]
    assert any(e["event"] == "heartbeat" for e in locks)


def test_devices_mix_one_and_two_units_and_both_ts_styles() -> None:
    kinds, styles = set(), set()
    for name, seed in itertools.product(scenario_names(), SEEDS):
        t = trip(name, seed)
        kinds.add(len(t.devices))
        for e in payloads(t)[:50]:
            styles.add(type(e["ts"]).__name__)
    assert kinds == {1, 2}
    assert styles == {"int", "str"}


def test_combined_unit_publishes_both_topics() -> None:
    t = next(
        trip(n, s)
        for n, s in itertools.product(scenario_names(), SEEDS)
        if len(trip(n, s).devices) == 1
    )
    (dev,) = t.devices
    assert dev["kind"] == "lock" and dev["topics"] == ["position", "lock"]
    assert {m.topic_suffix for m in t.messages if m.device_id == dev["device_id"]} == {
        "position",
        "lock",
    }


def test_signal_loss_sends_a_backlog_array_after_silence() -> None:
    t = trip("signal_loss_backlog")
    b0, b1 = t.marks["blackout_start"], t.marks["blackout_end"]
    assert b1 - b0 > 600_000
    ats = [m.at_ms for m in t.messages]
    assert not [a for a in ats if b0 <= a < b1]
    arrays = [m for m in t.messages if m.payload.startswith(b"[")]
    assert arrays and all(m.at_ms >= b1 for m in arrays)
    inner = [parse_ts(e["ts"]) for m in arrays for e in orjson.loads(m.payload)]
    assert min(inner) >= b0 and max(inner) < b1
    assert t.marks["incident"] > b0 and t.marks["incident_end"] < b1


def test_duplicates_are_sent_twice_and_shuffled() -> None:
    t = trip("duplicates_out_of_order")
    counts = Counter(m.payload for m in t.messages)
    assert set(counts.values()) == {2}
    ts = [parse_ts(orjson.loads(m.payload)["ts"]) for m in t.messages]
    assert any(b < a for a, b in itertools.pairwise(ts))  # out of event-time order
    assert all(0 <= m.at_ms - x <= 30_000 for m, x in zip(t.messages, ts, strict=True))


def test_gps_jump_is_one_wild_fix() -> None:
    t = trip("gps_jump")
    fixes = [e for e in payloads(t) if e["_topic"] == "position"]
    route = np.asarray(t.trip["route"]["coordinates"])
    tf = utm(*route[0])
    line = shapely.LineString(np.column_stack(tf.transform(route[:, 0], route[:, 1])))
    d = shapely.distance(
        shapely.points(*tf.transform([f["lon"] for f in fixes], [f["lat"] for f in fixes])), line
    )
    assert (d > 2_000).sum() == 1 and (d > 100).sum() == 1


def test_rest_area_geofence_covers_the_stop() -> None:
    t = trip("rest_area_stop")
    (fence,) = t.geofences
    assert fence["type"] == "Feature" and fence["properties"]["kind"] == "rest_area"
    assert fence["properties"]["geofence_id"]
    poly = shapely.geometry.shape(fence["geometry"])
    a, b = t.marks["incident"], t.marks["incident_end"]
    standing = [
        shapely.Point(e["lon"], e["lat"])
        for e in payloads(t)
        if e["_topic"] == "position" and a + 60_000 <= parse_ts(e["ts"]) <= b - 60_000
    ]
    assert standing and all(poly.contains(p) for p in standing)
    assert (b - a) > 35 * 60_000


def test_device_prefix_and_trip_id() -> None:
    t = build_scenario(
        "tamper", seed=3, start_ms=START, trip_id="X-1", shipper="unilever", device_prefix="e2e7-"
    )
    assert t.trip["trip_id"] == "X-1" and t.trip["shipper"] == "unilever"
    assert all(d.startswith("e2e7-") for d in t.trip["devices"])
    assert all(d["shipper"] == "unilever" for d in t.devices)
    assert all(m.device_id.startswith("e2e7-") for m in t.messages)
    assert t.expected[0]["device_id"].startswith("e2e7-lock") or t.expected[0][
        "device_id"
    ].startswith("e2e7-unit")


# -- real-world GNSS and contract v2 scenarios (simulators.scenarios_gnss) ----------------------

GNSS = list(GNSS_INCIDENTS)


def test_gnss_scenarios_are_listed_apart() -> None:
    assert set(GNSS) == {
        "drift_at_consignee",
        "pass_by_consignee",
        "risk_zone_entry",
        "late_arrival_withdrawn",
        "multipath_city",
    }
    assert not set(GNSS) & set(INCIDENTS)
    assert scenario_names(gnss=True) == [*scenario_names(), *GNSS]
    assert set(NEEDS_V2_ENGINE) <= set(GNSS)


@pytest.mark.parametrize("name", GNSS)
def test_gnss_scenario_builds_repeatably_with_a_normal_document(name: str) -> None:
    a = build_scenario(name, seed=5, start_ms=START)
    b = build_scenario(name, seed=5, start_ms=START)
    assert a.trip == b.trip and a.expected == b.expected and a.geofences == b.geofences
    assert [(m.payload, m.at_ms) for m in a.messages] == [(m.payload, m.at_ms) for m in b.messages]
    doc = trip(name).trip
    assert doc["corridor_m"] == 500 and doc["rules"] == {}
    assert all(s["radius_m"] == 200 for s in doc["stops"])


@pytest.mark.parametrize(("name", "seed"), list(itertools.product(GNSS, SEEDS)))
def test_gnss_scenario_expectations_match_the_reference(name: str, seed: int) -> None:
    t = trip(name, seed)
    got = outcome(name, seed)
    assert Counter(a["type"] for a in got.alarms) == Counter(e["type"] for e in t.expected)
    for exp in t.expected:
        (match,) = [a for a in got.alarms if a["type"] == exp["type"]]
        if "device_id" in exp:
            assert match["device_id"] == exp["device_id"]
        for key, value in exp["details"].items():
            assert match["details"].get(key) == value
    assert got.completed_at == t.marks["unsealed"]
    # no milestone twice, no `left` before the truck left
    seen = Counter((m["milestone"], m["stop_id"]) for m in got.milestones)
    assert max(seen.values()) == 1
    for m in got.milestones:
        if m["milestone"] == "left":
            assert m["ts"] >= t.marks[f"left:{m['stop_id']}"]
    assert not got.dead_letters


@pytest.mark.parametrize(
    ("name", "noise"), list(itertools.product(scenario_names(gnss=True), NOISE_KINDS))
)
def test_every_scenario_keeps_its_expectations_under_every_noise_kind(
    name: str, noise: str
) -> None:
    t = build_scenario(name, seed=7, start_ms=START, noise=noise)
    got = evaluate(t)
    assert Counter(a["type"] for a in got.alarms) == Counter(e["type"] for e in t.expected)
    for exp in t.expected:
        match = [a for a in got.alarms if a["type"] == exp["type"]]
        for key, value in exp["details"].items():
            assert match[0]["details"].get(key) == value, (exp, match)
    seen = Counter((m["milestone"], m["stop_id"]) for m in got.milestones)
    assert not seen or max(seen.values()) == 1
    assert got.completed_at is not None
    assert abs(got.completed_at - t.marks["unsealed"]) <= 5_000  # a skewed clock


def _fixes_in(t: SimTrip, a: int, b: int) -> list[dict]:
    return sorted(
        (e for e in payloads(t) if e["_topic"] == "position" and a <= parse_ts(e["ts"]) <= b),
        key=lambda e: parse_ts(e["ts"]),
    )


def _beyond_m(t: SimTrip, stop: dict, e: dict) -> float:
    """Metres beyond the stop's circular fence edge (negative inside)."""
    return GEOD.inv(e["lon"], e["lat"], *stop["geometry"]["coordinates"])[2] - stop["radius_m"]


@pytest.mark.parametrize("seed", SEEDS)
def test_drift_at_consignee_crosses_the_edge_but_never_leaves(seed: int) -> None:
    t = trip("drift_at_consignee", seed)
    s1 = t.trip["stops"][0]
    a, b = t.marks["arrived:S1"], t.marks["left:S1"]
    beyond = [_beyond_m(t, s1, e) for e in _fixes_in(t, a + 30_000, b - 1_000)]
    assert sum(x > 0 for x in beyond) >= 3  # single fixes across the raw edge ...
    far = [x > 50.0 for x in beyond]  # ... one multipath fix beyond the margin ...
    assert sum(far) == 1
    assert not any(x and y for x, y in itertools.pairwise(far))  # ... never two in a row
    assert max(x for x in beyond if x <= 50.0) > 10.0
    # the unseal: the lock and the GPS both place it outside the raw fence, within the margin
    (unseal,) = [
        e
        for e in payloads(t)
        if e["_topic"] == "lock" and e["event"] == "unlocked" and a <= parse_ts(e["ts"]) <= b
    ]
    assert 0.0 < _beyond_m(t, s1, unseal) < 50.0
    before = _fixes_in(t, parse_ts(unseal["ts"]) - 60_000, parse_ts(unseal["ts"]))
    assert before and 0.0 < _beyond_m(t, s1, before[-1]) < 50.0
    assert not t.expected and not outcome("drift_at_consignee", seed).alarms


@pytest.mark.parametrize("seed", SEEDS)
def test_pass_by_consignee_passes_close_without_entering(seed: int) -> None:
    t = trip("pass_by_consignee", seed)
    (fence,) = t.geofences
    assert fence["properties"]["kind"] == "consignee"
    site = shapely.geometry.shape(fence["geometry"])
    coords = np.asarray(t.trip["route"]["coordinates"])
    tf = utm(*coords[0])
    route = shapely.LineString(np.column_stack(tf.transform(coords[:, 0], coords[:, 1])))
    ring = np.asarray(site.exterior.coords)
    site_m = shapely.Polygon(np.column_stack(tf.transform(ring[:, 0], ring[:, 1])))
    assert 30.0 <= site_m.distance(route) <= 60.0
    near = [
        e
        for e in payloads(t)
        if e["_topic"] == "position"
        and site_m.distance(shapely.Point(*tf.transform(e["lon"], e["lat"]))) < 300
    ]
    assert near and all(e["speed_kmh"] > 5 for e in near)  # driving past, not stopping
    assert not any(site.contains(shapely.Point(e["lon"], e["lat"])) for e in near)
    assert outcome("pass_by_consignee", seed).geofence_events == []


@pytest.mark.parametrize("seed", SEEDS)
def test_risk_zone_is_entered_off_route_but_inside_the_corridor(seed: int) -> None:
    t = trip("risk_zone_entry", seed)
    (fence,) = t.geofences
    assert fence["properties"]["kind"] == "risk_zone"
    zone = shapely.geometry.shape(fence["geometry"])
    coords = np.asarray(t.trip["route"]["coordinates"])
    tf = utm(*coords[0])
    route = shapely.LineString(np.column_stack(tf.transform(coords[:, 0], coords[:, 1])))
    ring = np.asarray(zone.exterior.coords)
    assert (
        shapely.Polygon(np.column_stack(tf.transform(ring[:, 0], ring[:, 1]))).distance(route)
        > 330.0
    )
    fixes = [e for e in payloads(t) if e["_topic"] == "position"]
    inside = [e for e in fixes if zone.contains(shapely.Point(e["lon"], e["lat"]))]
    assert len(inside) >= 2
    dist = shapely.distance(
        shapely.points(*tf.transform([e["lon"] for e in fixes], [e["lat"] for e in fixes])), route
    )
    assert 380.0 < dist.max() < 490.0  # off the road, never out of the 500 m corridor
    (alarm,) = outcome("risk_zone_entry", seed).alarms
    assert alarm["details"]["geofence_id"] == fence["properties"]["geofence_id"]
    assert alarm["details"]["name"] == fence["properties"]["name"]


@pytest.mark.parametrize("seed", SEEDS)
def test_late_arrival_withdrawn_arrives_in_time_but_is_heard_late(seed: int) -> None:
    t = trip("late_arrival_withdrawn", seed)
    s1 = t.trip["stops"][0]
    deadline = parse_ts(s1["eta"]) + 30 * 60_000
    assert t.marks["incident"] == deadline
    fixes = sorted(
        (e for e in payloads(t) if e["_topic"] == "position"), key=lambda e: parse_ts(e["ts"])
    )
    first_in = next(e for e in fixes if _beyond_m(t, s1, e) <= 0)
    assert parse_ts(first_in["ts"]) < deadline < first_in["_at"]  # in time, heard late
    ats = sorted({m.at_ms for m in t.messages})
    assert max(np.diff(ats)) < 570_000  # no SIGNAL_LOST
    (alarm,) = outcome("late_arrival_withdrawn", seed).alarms
    assert alarm["details"] == {"stop_id": "S1", "withdrawn": True}


@pytest.mark.parametrize("seed", SEEDS)
def test_multipath_city_leaves_the_corridor_for_less_than_two_minutes(seed: int) -> None:
    t = trip("multipath_city", seed)
    coords = np.asarray(t.trip["route"]["coordinates"])
    tf = utm(*coords[0])
    route = shapely.LineString(np.column_stack(tf.transform(coords[:, 0], coords[:, 1])))
    fixes = sorted(
        (e for e in payloads(t) if e["_topic"] == "position"), key=lambda e: parse_ts(e["ts"])
    )
    d = shapely.distance(
        shapely.points(*tf.transform([e["lon"] for e in fixes], [e["lat"] for e in fixes])), route
    )
    out = np.flatnonzero(d > 500.0)
    assert 3 <= out.size <= 4 and out[-1] - out[0] == out.size - 1  # one run of 3-4 fixes
    span = parse_ts(fixes[out[-1]]["ts"]) - parse_ts(fixes[out[0]]["ts"])
    assert span < 120_000
    assert ((d > 45.0) & (d <= 500.0)).sum() >= 1  # and smaller bursts
    assert not outcome("multipath_city", seed).alarms


def test_a_fleet_keeps_its_trucks_out_of_a_fleet_mates_risk_zone() -> None:
    fleet = build_fleet(120, seed=6, start_ms=START, incidents=["risk_zone_entry"])
    zones = [shapely.geometry.shape(g["geometry"]) for t in fleet for g in t.geofences]
    assert len(zones) == 1
    owner = next(t for t in fleet if t.geofences)
    for t in fleet:
        if t is owner or t.script is None:
            continue
        p = t.script.plan.path
        line = shapely.LineString(np.column_stack([p.lon, p.lat]))
        assert line.distance(zones[0]) > 300.0 / 111_000.0
