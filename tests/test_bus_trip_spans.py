"""Bus mode honours trip spans: a GPS unit rode on acme's trip A, which ended; pg's trip B
(another route, 55 km away) now has it. Stage 1 keys the unit's late backlog from A's time
to its current trip, B, so B's trip partition receives it: it is stored, and judged by no
trip (no false ROUTE_DEVIATION for pg, no acme positions shown as B's). A and B sit in
different trip partitions, so B's engine never saw A end: it learns A's span from the store,
when it loads B (``refresh_trip``) or, if B was loaded before A ended, when told that a trip
of the unit changed (``TripPartition.note_ended``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from alerts import AlarmService, LiveHub
from alerts.live import Subscription
from cargowatch.busmode.apigate import ApiGate
from cargowatch.busmode.codec import encode, kind_of
from cargowatch.busmode.tripstage import TripPartition
from cargowatch.metrics import Metrics
from cargowatch.services import DeviceService, TripService
from core.clock import ManualClock
from telemetry.bus.consumer import BusMessage
from telemetry.bus.partitions import trip_partition, trip_subject
from telemetry.bus.rekey import TRIP_HEADER
from telemetry.models import Fix, LockEvent, LockEventType
from telemetry.parse import format_ts
from telemetry.store import Store, open_store
from tests.bus_support import ROUTE, trip_doc

P2 = 4
T0 = 1_795_334_400_000
MIN = 60_000
A, B = "A", "B"  # trip partitions 0 and 1 of 4
NORTH = 0.5  # B's plan: A's shifted 0.5° north (55 km)


def test_a_and_b_sit_in_different_partitions() -> None:
    assert trip_partition(A, P2) != trip_partition(B, P2)


class World:
    """A store, the API's services (``TripService`` over an ``ApiGate``, as ``serve --bus``
    runs them) and a trip partition for each of A and B, as two workers would hold them. A
    trip the API changed is refreshed by its partition, as the workers' control handler does
    (``deaf``: those trips' partitions do not hear of it, so B's loads B on its first
    message)."""

    def __init__(self, tmp_path: Path, deaf: tuple[str, ...] = ()) -> None:
        self.store: Store = open_store(f"sqlite:///{tmp_path / 'bus.sqlite'}")
        self.clock = ManualClock(T0)
        self.deaf = deaf
        gate = ApiGate(
            self.store,
            AlarmService(self.store, self.clock, LiveHub()),
            self.clock,
            notify=self.control,
        )
        devices = DeviceService(self.store, self.clock, prefix="devices", known=lambda _: None)
        self.trips = TripService(self.store, self.clock, gate, devices)
        self.hub = LiveHub()
        self.seq = 0
        self.parts = {
            t: TripPartition(
                trip_partition(t, P2),
                P2,
                store=self.store,
                clock=self.clock,
                hub=self.hub if t == B else LiveHub(),
                metrics=Metrics(),
            )
            for t in (A, B)
        }
        for part in self.parts.values():
            part.load()  # acquired before the trips exist

    def control(self, doc: dict[str, Any]) -> None:
        trip = doc.get("trip")
        if trip in self.parts and trip not in self.deaf:
            self.parts[trip].refresh(trip)

    def create_a(self) -> None:
        """acme's trip A, planned from an hour ago, on the route near Shanghai."""
        self.trips.create(trip_doc(A, "acme", ["gps-1", "lock-1"], T0))

    def create_b(self, planned_start: int) -> None:
        """pg's trip B with the same GPS unit (and its own lock), on a route 55 km north."""
        doc = trip_doc(B, "pg", ["gps-1", "lock-2"], T0)
        doc["origin"]["geometry"]["coordinates"] = north(doc["origin"]["geometry"]["coordinates"])
        doc["route"]["coordinates"] = [north(p) for p in doc["route"]["coordinates"]]
        for stop in doc["stops"]:
            stop["geometry"]["coordinates"] = north(stop["geometry"]["coordinates"])
        doc["planned_start"] = format_ts(planned_start)
        self.trips.create(doc)

    def send(self, trip: str, records: Sequence[Fix | LockEvent]) -> None:
        """Records keyed to ``trip`` (stage 1's choice: the device's current trip) reach the
        partition holding it, received now."""
        now = self.clock.now_ms()
        msgs = []
        for r in records:
            r.received_at = now
            self.seq += 1
            msgs.append(
                BusMessage(
                    subject=trip_subject(trip_partition(trip, P2), r.device_id, kind_of(r)),
                    device_id=r.device_id,
                    kind=kind_of(r),
                    data=encode(r),
                    stream_seq=self.seq,
                    timestamp_ns=now * 1_000_000,
                    delivered=1,
                    headers={TRIP_HEADER: trip},
                )
            )
        self.parts[trip].process(msgs)

    def alarms(self, trip: str, type: str | None = None) -> list[dict[str, Any]]:
        return self.store.list_alarms(trip_id=trip, type=type)

    def state(self, trip: str) -> dict[str, Any]:
        with self.parts[trip].gate.held() as engine:
            return engine.trip_state(trip)

    def close(self) -> None:
        for part in self.parts.values():
            part.close()


def north(point: list[float], dlat: float = NORTH) -> list[float]:
    return [point[0], point[1] + dlat]


def along_a(ts0: int, k0: int, n: int) -> list[Fix]:
    """gps-1 every 30 s along the first leg of A's route (~25 km/h), from step ``k0``."""
    (lon0, lat0), (lon1, lat1) = ROUTE[0], ROUTE[1]
    out = []
    for k in range(k0, k0 + n):
        f = k / 100
        lon, lat = lon0 + (lon1 - lon0) * f, lat0 + (lat1 - lat0) * f
        out.append(Fix("gps-1", ts0 + (k - k0) * 30_000, lat, lon, 25.0, seq=k))
    return out


def along_b(ts0: int, k0: int, n: int, off_deg: float = 0.0) -> list[Fix]:
    """The same steps on B's route (``off_deg`` further north: off its corridor)."""
    return [
        Fix(f.device_id, f.ts, f.lat + NORTH + off_deg, f.lon, f.speed_kmh, seq=1000 + (f.seq or 0))
        for f in along_a(ts0, k0, n)
    ]


def a_ran_and_ended(w: World) -> None:
    """A ran on gps-1 from T0 (its unit fell silent after 5 min) until the desk completed it
    at T0+30min."""
    w.clock.set(T0 + 5 * MIN)
    w.send(A, along_a(T0, 0, 10))
    assert (w.store.get_trip(A) or {}).get("status") == "active"
    w.clock.set(T0 + 30 * MIN)
    w.trips.end(A, "completed", "desk-07")


def backlog_of_a() -> list[Fix]:
    """What gps-1 buffered on A: 20 minutes of A's time (T0+5..25min), along A's route."""
    return along_a(T0 + 5 * MIN, 10, 40)


def b_activates(w: World) -> None:
    """The partition's wall-clock tick starts B at its planned start (T0+40min), before the
    unit reports on B: so the backlog, arriving next, is not late data for B (whose journal
    re-run would start from B still planned) but applied on B as it is, active."""
    w.clock.set(T0 + 41 * MIN)
    w.parts[B].tick(w.clock.now_ms(), backlog=False)
    assert w.state(B)["status"] == "active"


def positions(live: Subscription) -> list[dict[str, Any]]:
    return [e for e in live.drain() if e.get("type") == "position"]


@pytest.mark.parametrize("loaded_on", ["control", "first-message"])
def test_a_backlog_of_the_ended_trip_is_not_judged_by_the_trip_loaded_after(
    tmp_path: Path, loaded_on: str
) -> None:
    """B is loaded by its partition after A ended: when told B was created (then started by
    the tick), or, that word not heard, on its first message: the backlog itself."""
    first = loaded_on == "first-message"
    w = World(tmp_path, deaf=(B,) if first else ())
    try:
        w.create_a()
        a_ran_and_ended(w)
        w.clock.set(T0 + 35 * MIN)
        w.create_b(planned_start=T0 + 40 * MIN)
        if not first:
            b_activates(w)
        live = w.hub.subscribe()

        w.clock.set(T0 + 45 * MIN)
        w.send(B, backlog_of_a())  # keyed to B: gps-1's trip now
        assert w.alarms(B) == []
        assert w.state(B)["last_fix"] is None  # not B's positions
        assert positions(live) == []
        assert len(w.store.fixes(["gps-1"], T0)) == 10 + 40  # stored all the same

        # B's own data is judged by B: 10 minutes 5 km off its corridor
        w.parts[B].tick(w.clock.now_ms(), backlog=False)
        assert w.state(B)["status"] == "active"
        w.clock.set(T0 + 56 * MIN)
        w.send(B, along_b(T0 + 46 * MIN, 3, 20, off_deg=0.05))
        assert len(w.alarms(B, "ROUTE_DEVIATION")) == 1
        assert (w.state(B)["last_fix"] or {}).get("ts") == T0 + 46 * MIN + 19 * 30_000
        assert {e["data"]["trip_id"] for e in positions(live)} == {B}
    finally:
        w.close()


@pytest.mark.parametrize("told", [True, False], ids=["told", "not-told"])
def test_a_trip_loaded_before_the_previous_one_ended_learns_its_span_when_told(
    tmp_path: Path, told: bool
) -> None:
    """B is loaded in its partition (on a message of its own lock) while A still runs; A
    ends through the API; B's partition is told (the worker's control handler calls
    ``note_ended`` with the changed trip's devices). Not told, B's engine takes A's backlog
    for B's: the case the call is for."""
    w = World(tmp_path, deaf=(B,))
    try:
        w.create_a()
        w.create_b(planned_start=T0 + 40 * MIN)
        w.clock.set(T0 + 2 * MIN)
        w.send(B, [LockEvent("lock-2", T0 + MIN, LockEventType.HEARTBEAT, seq=1)])
        assert w.state(B)["status"] == "planned"  # loaded, before A ended
        a_ran_and_ended(w)
        if told:
            w.parts[B].note_ended(["gps-1", "lock-1"])
        b_activates(w)

        w.clock.set(T0 + 50 * MIN)
        w.send(B, backlog_of_a())
        # (B's unit, silent on B since T0+2min: its SIGNAL_LOST is right, and not at issue)
        kinds = {a["type"] for a in w.alarms(B)}
        if told:
            assert kinds <= {"SIGNAL_LOST"}
            assert w.state(B)["last_fix"] is None
        else:
            assert "ROUTE_DEVIATION" in kinds
        assert len(w.store.fixes(["gps-1"], T0)) == 10 + 40
    finally:
        w.close()


def test_the_batch_that_loads_a_trip_keeps_its_alarms(tmp_path: Path) -> None:
    """A's partition never heard that the API created A (the control message is at most
    once), so A's first batch loads it — and re-runs A's messages stored since the API's
    checkpoint, this batch's included (stored just before, in the same transaction). What
    that re-run raised is this batch's only record of it: a tamper must still be an alarm,
    once, and the trip's activation a status change."""
    w = World(tmp_path, deaf=(A,))
    try:
        w.create_a()
        w.clock.set(T0 + 2 * MIN)
        fixes = along_a(T0 + MIN, 0, 3)
        tamper = LockEvent("lock-1", T0 + 90_000, LockEventType.TAMPER, seq=1)
        w.send(A, [*fixes, tamper])
        assert [a["type"] for a in w.alarms(A)] == ["LOCK_TAMPER"]
        w.send(A, [tamper])  # redelivered: nothing twice
        assert len(w.alarms(A, "LOCK_TAMPER")) == 1
    finally:
        w.close()
