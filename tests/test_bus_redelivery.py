"""A trip partition's batch redelivered after the partition moved to another worker raises
nothing twice — whether the old owner's commit landed before the new owner restored the
partition, or after (a lease can move while a commit is in flight). Bundles of re-keyed
records: the codec, the split, and a partition reading bundles and single-record messages of
the same records (an upgrade) stores and raises everything once."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from alerts import LiveHub
from cargowatch.busmode.apigate import ApiGate
from cargowatch.busmode.codec import BUNDLE, decode, decode_bundle, encode, kind_of
from cargowatch.busmode.rekeyer import MAX_BUNDLE_BYTES, bundles
from cargowatch.busmode.tripstage import TripPartition
from cargowatch.metrics import Metrics
from cargowatch.services import DeviceService, TripService
from core.clock import ManualClock
from telemetry.bus.consumer import BusMessage
from telemetry.bus.partitions import trip_partition, trip_subject
from telemetry.bus.rekey import MSG_ID, TRIP_HEADER, Rekeyed
from telemetry.models import Fix, LockEvent, LockEventType, UnlockMethod
from telemetry.store import Store, open_store
from tests.bus_support import trip_doc

P2 = 4
T0 = 1_795_334_400_000


def message(record: Fix | LockEvent, trip: str, seq: int) -> BusMessage:
    n = trip_partition(trip, P2)
    return BusMessage(
        subject=trip_subject(n, record.device_id, kind_of(record)),
        device_id=record.device_id,
        kind=kind_of(record),
        data=encode(record),
        stream_seq=seq,
        timestamp_ns=record.received_at * 1_000_000,
        delivered=1,
        headers={TRIP_HEADER: trip},
    )


def batch(trip: str) -> list[BusMessage]:
    recs: list[Fix | LockEvent] = []
    for i in range(30):  # along the first leg of the route at ~77 km/h
        ts = T0 + i * 10_000
        recs.append(
            Fix(
                "gps-1",
                ts,
                31.45 - 0.001 * i,
                121.10 + 0.002 * i,
                60.0,
                seq=i,
                received_at=ts + 500,
            )
        )
    ts = T0 + 300_000
    recs.append(LockEvent("lock-1", ts, LockEventType.TAMPER, seq=1, received_at=ts + 500))
    recs.append(
        LockEvent(
            "lock-1",
            ts + 1000,
            LockEventType.UNLOCKED,
            UnlockMethod.RFID,
            seq=2,
            received_at=ts + 1500,
        )
    )
    return [message(r, trip, k) for k, r in enumerate(recs)]


def test_codec_round_trip() -> None:
    f = Fix("a.b:c", 1, 2.5, 3.5, None, 10.0, 0.9, 7, 88.0, 42, 5, {"x": [1]})
    assert decode("a.b:c", encode(f)) == f and decode("a.b:c", encode(f)).extra == {"x": [1]}
    e = LockEvent("l", 2, LockEventType.UNLOCKED, UnlockMethod.RFID, None, None, 50.0, 3, 4)
    assert decode("l", encode(e)) == e


def partition(store: Store, clock: ManualClock, n: int) -> TripPartition:
    part = TripPartition(n, P2, store=store, clock=clock, hub=LiveHub(), metrics=Metrics())
    part.load()
    return part


def world(tmp_path: Path) -> tuple[Store, ManualClock, int]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = open_store(f"sqlite:///{tmp_path / 'bus.sqlite'}")
    clock = ManualClock(T0)
    gate = ApiGate(store, _alarms(store, clock), clock)
    devices = DeviceService(store, clock, prefix="devices", known=lambda _: None)
    trips = TripService(store, clock, gate, devices)
    trips.create(trip_doc("T1", "pg", ["gps-1", "lock-1"], T0))
    return store, clock, trip_partition("T1", P2)


def _alarms(store: Store, clock: ManualClock):  # type: ignore[no-untyped-def]
    from alerts import AlarmService

    return AlarmService(store, clock, LiveHub())


def outcome(store: Store) -> tuple[Counter[str], Counter[str]]:
    alarms = Counter(a["type"] for a in store.list_alarms(limit=1000))
    events = Counter(
        f"{e.get('kind')}:{e.get('stop_id') or e.get('status') or ''}"
        for e in store.trip_events("T1")
    )
    return alarms, events


def run(part: TripPartition, msgs: Sequence[BusMessage], clock: ManualClock) -> None:
    clock.set(T0 + 310_000)
    part.process(msgs)


@pytest.mark.parametrize("order", ["commit-then-move", "move-then-late-commit"])
def test_a_batch_redelivered_after_the_partition_moved_raises_nothing_twice(
    tmp_path: Path, order: str
) -> None:
    ref_store, ref_clock, n = world(tmp_path / "ref")
    run(partition(ref_store, ref_clock, n), batch("T1"), ref_clock)
    expected = outcome(ref_store)
    assert expected[0]["LOCK_TAMPER"] == 1 and expected[0]["UNAUTHORIZED_UNLOCK"] == 1

    store, clock, n = world(tmp_path / "run")
    old = partition(store, clock, n)
    msgs = batch("T1")
    if order == "commit-then-move":
        run(old, msgs, clock)  # committed, but the ack was lost with the lease
        new = partition(store, clock, n)
    else:
        new = partition(store, clock, n)  # restored before the old owner's commit landed
        run(old, msgs, clock)
    old.close()
    run(new, msgs, clock)  # the stream redelivers the unacknowledged batch
    new.tick(T0 + 320_000, backlog=False)
    alarms, events = outcome(store)
    assert alarms == expected[0]
    assert events == expected[1]
    assert max(events.values()) == 1, events
    assert store.count_telemetry()["fixes"] == 30
    with pytest.raises(RuntimeError):
        old.process(msgs)  # a lost partition takes no more batches


def rekeyed(msgs: Sequence[BusMessage]) -> list[Rekeyed]:
    out = []
    for m in msgs:
        r = decode(str(m.device_id), m.data)
        out.append(
            Rekeyed(r.device_id, kind_of(r), r.ts, r.seq, (m.headers or {})["Cw-Trip"], m.data)
        )
    return out


def as_messages(items: Sequence[Rekeyed], first_seq: int) -> list[BusMessage]:
    out = []
    for k, b in enumerate(bundles(items, P2)):
        parts = b.subject.split(".")
        out.append(
            BusMessage(b.subject, parts[2], parts[3], b.payload, first_seq + k, T0 * 10**6, 1)
        )
    return out


def test_bundles_keep_order_per_partition_and_stay_small() -> None:
    f = Fix("a.b:c", 1, 2.5, 3.5, None, 10.0, 0.9, 7, 88.0, 42, 5, {"x": "ü" * 100})
    e = LockEvent("l", 2, LockEventType.UNLOCKED, UnlockMethod.RFID, None, None, 50.0, 3, 4)
    records = [
        (dataclasses.replace(r, ts=r.ts + i), trip)
        for i in range(3000)
        for r, trip in ((f, f"T-{i % 7}"), (e, None))
    ]
    items = [Rekeyed(r.device_id, kind_of(r), r.ts, r.seq, t, encode(r)) for r, t in records]
    out = bundles(items, P2)
    assert all(b.subject.endswith(f".{BUNDLE}") for b in out)
    assert max(len(b.payload) for b in out) <= MAX_BUNDLE_BYTES < sum(len(b.payload) for b in out)
    assert sum(b.records for b in out) == len(items)
    assert len({b.headers[MSG_ID] for b in out}) == len(out)
    assert [b.headers for b in out] == [b.headers for b in bundles(items, P2)]  # redelivered
    got: dict[int, list[tuple[Fix | LockEvent, str | None]]] = {}
    for b in out:
        got.setdefault(int(b.subject.split(".")[1]), []).extend(decode_bundle(b.payload))
    for n, entries in got.items():
        want = [i for i in items if trip_partition(i.trip_id or i.device_id, P2) == n]
        assert [(kind_of(r), r.ts, trip) for r, trip in entries] == [
            (i.kind, i.ts, i.trip_id) for i in want
        ]
    assert sorted(got.values(), key=len)[-1][0] in records
    with pytest.raises(ValueError):
        decode_bundle(b'{"not": "a bundle"}')


def test_bundles_and_single_messages_of_the_same_records_count_once(tmp_path: Path) -> None:
    ref_store, ref_clock, n = world(tmp_path / "ref")
    run(partition(ref_store, ref_clock, n), batch("T1"), ref_clock)
    expected = outcome(ref_store)

    store, clock, n = world(tmp_path / "run")
    part = partition(store, clock, n)
    singles = batch("T1")
    run(part, as_messages(rekeyed(singles[:20]), 100), clock)  # bundles
    run(part, singles[10:25], clock)  # written before bundles, overlapping
    run(part, as_messages(rekeyed(singles), 200), clock)  # a redelivery in another composition
    part.tick(T0 + 320_000, backlog=False)
    assert outcome(store) == expected
    assert store.count_telemetry() == {"fixes": 30, "lock_events": 2, "dead_letters": 0}
    bad = BusMessage(f"trip.{n}.gps-1.{BUNDLE}", "gps-1", BUNDLE, b"[1]", 301, T0 * 10**6, 1)
    part.process([*as_messages(rekeyed(singles[:1]), 300), bad])
    assert store.count_telemetry()["dead_letters"] == 1  # a bad bundle, dead-lettered whole
