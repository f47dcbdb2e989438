"""Stage 1 (``busmode.devicestage``) against the real store: a device batch redelivered after
its dead letters were stored (a crash, or a failed re-key, before the acknowledgement) stores
each dead letter once; a redelivered message whose dead letters never were stored gets them;
the device → trip map (read whole, per device after a change)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cargowatch.busmode.devicestage import DeviceStage, mark_of, stream_mark
from cargowatch.metrics import Metrics
from core.clock import SystemClock
from telemetry.bus.consumer import BusMessage
from telemetry.bus.partitions import partition_of
from telemetry.store import Store, open_store

P = 4
NOW_MS = 1_795_334_400_000


def message(device: str, kind: str, data: bytes, seq: int, delivered: int = 1) -> BusMessage:
    return BusMessage(
        subject=f"part.{partition_of(device, P)}.devices.{device}.{kind}",
        device_id=device,
        kind=kind,
        data=data,
        stream_seq=seq,
        timestamp_ns=(NOW_MS + seq) * 1_000_000,  # when the server stored it: every delivery
        delivered=delivered,
    )


def batch(delivered: int) -> list[BusMessage]:
    good = orjson.dumps({"ts": NOW_MS - 5000, "lat": 31.4, "lon": 121.2, "seq": 1})
    backlog = orjson.dumps(  # one message, two bad elements: two dead letters of one message
        [{"ts": NOW_MS - 9000, "lat": 95.0, "lon": 121.0}, {"ts": NOW_MS - 8000, "lat": 31.0}]
    )
    return [
        message("gps-1", "position", good, 10, delivered),
        message("gps-1", "position", b"{not json", 11, delivered),
        message("gps-1", "position", backlog, 12, delivered),
        message("ghost", "position", good, 13, delivered),  # not registered
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'stage.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = open_store(url)
    s.put_device({"device_id": "gps-1", "kind": "gps", "shipper": "pg"})
    return s


def rows(store: Store) -> list[tuple[str | None, str, str]]:
    return sorted(
        (d["device_id"], d["reason"], mark_of(d["detail"])) for d in store.dead_letters(limit=1000)
    )


def test_a_redelivered_batch_stores_each_dead_letter_once(store: Store) -> None:
    stage = DeviceStage(store, SystemClock(), Metrics())
    first = stage.validate(batch(delivered=1))
    stored = rows(store)
    assert [r[1] for r in stored].count("bad_json") == 1
    assert ("ghost", "unknown_device", stream_mark(13)) in stored
    assert len([r for r in stored if r[2] == stream_mark(12)]) == 2  # both bad elements
    assert len(stored) == 4 and all(r[2] for r in stored)
    # the worker died before the acknowledgement: the stream delivers the batch again
    again = stage.validate(batch(delivered=2))
    assert rows(store) == stored
    assert again == first  # the records are re-keyed again (the trip stream drops duplicates)
    # a third delivery by a fresh worker (no cache) changes nothing either
    DeviceStage(store, SystemClock(), Metrics()).validate(batch(delivered=3))
    assert rows(store) == stored


def test_a_redelivered_message_whose_dead_letters_were_never_stored_gets_them(
    store: Store,
) -> None:
    stage = DeviceStage(store, SystemClock(), Metrics())
    stage.validate(batch(delivered=1)[:1])  # the first delivery failed before its dead letters
    assert rows(store) == []
    stage.validate(batch(delivered=2))
    assert len(rows(store)) == 4
    # another bad message of the same device later: a new stream sequence, a new row
    stage.validate([message("gps-1", "position", b"{not json", 14)])
    assert [r[2] for r in rows(store) if r[1] == "bad_json"] == [stream_mark(11), stream_mark(14)]


def test_the_device_trip_map_is_read_whole_and_follows_changes(store: Store) -> None:
    """Active before planned, the planned trip starting first; a device on no trip is keyed
    by nothing; a change is seen at once after ``forget`` and by everyone after the TTL."""

    def trip(trip_id: str, status: str, start: int, devices: list[str]) -> None:
        doc = {"trip_id": trip_id, "status": status, "planned_start": start, "devices": devices}
        store.put_trip(doc)

    trip("A", "active", NOW_MS - 1000, ["gps-1"])
    trip("A0", "completed", NOW_MS, ["gps-1"])
    trip("B", "planned", NOW_MS + 9000, ["gps-2", "gps-3"])
    trip("C", "planned", NOW_MS + 5000, ["gps-2"])
    clock = [0.0]
    stage = DeviceStage(store, SystemClock(), Metrics(), monotonic=lambda: clock[0])
    assert [stage.trip_of(d) for d in ("gps-1", "gps-2", "gps-3", "gps-9")] == ["A", "C", "B", None]
    trip("A", "completed", NOW_MS - 1000, ["gps-1"])
    trip("D", "active", NOW_MS, ["gps-1", "gps-3"])
    assert stage.trip_of("gps-1") == "A"  # cached until the TTL or a control message
    stage.forget(["gps-1"])
    assert (stage.trip_of("gps-1"), stage.trip_of("gps-3")) == ("D", "B")
    clock[0] += stage.ttl_s
    assert [stage.trip_of(d) for d in ("gps-1", "gps-2", "gps-3")] == ["D", "C", "D"]
    trip("D", "completed", NOW_MS, ["gps-1", "gps-3"])
    clock[0] += stage.ttl_s
    assert (stage.trip_of("gps-1"), stage.trip_of("gps-3")) == (None, "B")


def test_while_another_thread_reads_the_map_an_expired_entry_is_used(store: Store) -> None:
    """No query per message while another partition's thread reloads the whole map: a device
    with an (expired) entry keeps it; a forgotten one is looked up alone."""
    store.put_trip(
        {"trip_id": "A", "status": "active", "planned_start": NOW_MS, "devices": ["g1", "g2"]}
    )
    clock = [0.0]
    stage = DeviceStage(store, SystemClock(), Metrics(), monotonic=lambda: clock[0])
    assert stage.trip_of("g1") == "A" and stage.trip_of("g2") == "A"
    asked: list[str] = []
    alone = store.trips_for_device

    def spy(device_id: str, status: str | None = None) -> list[dict]:
        asked.append(device_id)
        return alone(device_id, status)

    store.trips_for_device = spy  # type: ignore[method-assign]
    clock[0] += stage.ttl_s  # every entry expired: the map is due
    stage.forget(["g2"])
    with stage._reloading:  # another thread is reading it
        assert stage.trip_of("g1") == "A"
        assert stage.trip_of("g2") == "A"
    assert asked == ["g2"]
