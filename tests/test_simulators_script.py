"""Scripts to messages: ordering, seq, backlogs, duplicates, jumps, extras."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import orjson
import pytest

from simulators.elock import LockAction
from simulators.model import SimMessage
from simulators.payloads import DeviceSpec
from simulators.reference import parse_ts
from simulators.roads import default_atlas
from simulators.script import BACKLOG_CHUNK, Jump, TruckScript
from simulators.truck import DrivePlan, Halt, Reporting

T0 = 1_795_334_400_000
MIN = 60_000


def script(combined: bool = False, **kw) -> TruckScript:
    path = default_atlas().roads[1].path
    plan = DrivePlan(path, T0 + 10 * MIN, (Halt(150, 600, "traffic"),))
    rep = Reporting(interval_s=10, idle_every=3)
    gps = DeviceSpec(
        "unit-1" if combined else "gps-1",
        "combined" if combined else "gps",
        seq0=100,
        reporting=rep,
    )
    lock = (
        gps if combined else DeviceSpec("lock-1", "lock", ts_style="epoch_ms", seq0=7, battery0=80)
    )
    acts = (
        LockAction(T0 + 3 * MIN + 5, "locked"),
        LockAction(T0 + 80 * MIN + 7, "unlocked", "rfid"),
    )
    base = TruckScript((1, 2), plan, T0, T0 + 90 * MIN, gps, lock, acts)
    return replace(base, **kw)


def bodies(msgs: list[SimMessage]) -> list[tuple[SimMessage, dict]]:
    out = []
    for m in msgs:
        doc = orjson.loads(m.payload)
        out += [(m, el) for el in (doc if isinstance(doc, list) else [doc])]
    return out


@pytest.mark.parametrize("combined", [False, True])
def test_order_and_seq(combined: bool) -> None:
    sc = script(combined)
    msgs = list(sc.iter_messages())
    assert [m.at_ms for m in msgs] == sorted(m.at_ms for m in msgs)
    assert msgs == list(sc.iter_messages())  # repeatable
    assert msgs[0].at_ms >= sc.on_ms and msgs[-1].at_ms <= sc.off_ms
    for dev in {m.device_id for m in msgs}:
        els = sorted((parse_ts(e["ts"]), e["seq"]) for m, e in bodies(msgs) if m.device_id == dev)
        seqs = [s for _, s in els]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gapless, in event-time order
    assert {m.topic_suffix for m in msgs if m.device_id == sc.gps.device_id} == (
        {"position", "lock"} if combined else {"position"}
    )
    events = [e["event"] for m, e in bodies(msgs) if m.topic_suffix == "lock"]
    assert events.count("locked") == 1 and events.count("unlocked") == 1
    assert events.count("heartbeat") >= 8


def test_blackout_holds_everything_and_sends_array_backlogs() -> None:
    b0, b1 = T0 + 20 * MIN, T0 + 45 * MIN
    msgs = list(script(blackouts=((b0, b1),)).iter_messages())
    assert not [m for m in msgs if b0 <= m.at_ms < b1]
    arrays = [m for m in msgs if m.payload.startswith(b"[")]
    assert {m.device_id for m in arrays} == {"gps-1", "lock-1"}
    held = bodies(arrays)
    assert all(b0 <= parse_ts(e["ts"]) < b1 for _, e in held)
    assert all(b1 <= m.at_ms < b1 + 5_000 for m in arrays)
    assert max(len(orjson.loads(m.payload)) for m in arrays) == BACKLOG_CHUNK
    # nothing lost: the same records as without the blackout
    plain = bodies(list(script().iter_messages()))
    assert sorted(orjson.dumps(e) for _, e in bodies(msgs)) == sorted(
        orjson.dumps(e) for _, e in plain
    )


def test_redelivery_duplicates_and_shuffles() -> None:
    msgs = list(script(redeliver_s=30.0).iter_messages())
    pairs = [(m.payload, m.device_id) for m in msgs]
    assert set(Counter(pairs).values()) == {2}
    ts = [parse_ts(orjson.loads(m.payload)["ts"]) for m in msgs]
    assert any(b < a for a, b in itertools.pairwise(ts))
    assert all(0 <= m.at_ms - t < 30_000 for m, t in zip(msgs, ts, strict=True))


def test_jump_moves_exactly_one_fix_far() -> None:
    at = T0 + 30 * MIN
    plain = [e for m, e in bodies(list(script().iter_messages())) if m.topic_suffix == "position"]
    jumped = [
        e
        for m, e in bodies(list(script(jump=Jump(at, 6_000, 0)).iter_messages()))
        if m.topic_suffix == "position"
    ]
    moved = [(a, b) for a, b in zip(plain, jumped, strict=True) if a["lon"] != b["lon"]]
    assert len(moved) == 1
    a, b = moved[0]
    assert parse_ts(b["ts"]) >= at and b["hdop"] == 9.9
    assert abs(b["lon"] - a["lon"]) * 106_000 == pytest.approx(6_000, rel=0.02)


def test_outage_drops_fixes_and_lock_positions() -> None:
    o0, o1 = T0 + 20 * MIN, T0 + 30 * MIN
    sc = script(gps_outages=((o0, o1),))
    els = bodies(list(sc.iter_messages()))
    assert not [e for m, e in els if m.topic_suffix == "position" and o0 <= parse_ts(e["ts"]) < o1]
    in_outage = [e for m, e in els if m.topic_suffix == "lock" and o0 <= parse_ts(e["ts"]) < o1]
    assert in_outage and all("lat" not in e for e in in_outage)


def test_extras_are_sent_as_they_are() -> None:
    extra = SimMessage("position", "gps-1", b"{not json", T0 + 33 * MIN)
    msgs = list(script(extras=(extra,)).iter_messages())
    assert extra in msgs
    assert [m.at_ms for m in msgs] == sorted(m.at_ms for m in msgs)
    assert len(msgs) == len(list(script().iter_messages())) + 1
