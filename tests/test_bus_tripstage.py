"""A worker's stage 2 (``busmode.tripstage.TripStage``): ONE engine over every trip partition
the worker holds. A round of two partitions' batches is one store transaction and raises each
trip's alarms; a partition released leaves the engine (its batches refused, its state
checkpointed) and comes back from its checkpoint when acquired again; the wall-clock rules
judge a partition with messages waiting only up to what it evaluated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from alerts import LiveHub
from cargowatch.busmode.apigate import ApiGate
from cargowatch.busmode.tripstage import TripStage
from cargowatch.metrics import Metrics
from cargowatch.services import DeviceService, TripService
from core.clock import ManualClock
from rules import RulesError
from telemetry.bus.consumer import BusMessage
from telemetry.bus.partitions import trip_partition
from telemetry.models import Fix, LockEvent, LockEventType
from telemetry.store import Store, open_store
from tests.bus_support import trip_doc
from tests.test_bus_redelivery import P2, T0, _alarms, message

A, B = "TA", "TC"


def test_the_two_trips_sit_in_different_partitions() -> None:
    assert trip_partition(A, P2) != trip_partition(B, P2)


def _world(tmp_path: Path) -> tuple[Store, ManualClock, TripStage]:
    store = open_store(f"sqlite:///{tmp_path / 'bus.sqlite'}")
    clock = ManualClock(T0)
    gate = ApiGate(store, _alarms(store, clock), clock)
    devices = DeviceService(store, clock, prefix="devices", known=lambda _: None)
    trips = TripService(store, clock, gate, devices)
    trips.create(trip_doc(A, "pg", ["gps-a", "lock-a"], T0))
    trips.create(trip_doc(B, "pg", ["gps-b", "lock-b"], T0))
    stage = TripStage(P2, store=store, clock=clock, hub=LiveHub(), metrics=Metrics())
    for trip in (A, B):
        stage.acquire(trip_partition(trip, P2))
    return store, clock, stage


def _fixes(trip: str, device: str, k0: int, n: int) -> list[BusMessage]:
    out = []
    for i in range(k0, k0 + n):  # along the first leg of the route at ~77 km/h
        ts = T0 + i * 10_000
        f = Fix(device, ts, 31.45 - 0.001 * i, 121.10 + 0.002 * i, 60.0, seq=i, received_at=ts)
        out.append(message(f, trip, 1000 + i))
    return out


def _tamper(trip: str, lock: str, ts: int) -> list[BusMessage]:
    return [message(LockEvent(lock, ts, LockEventType.TAMPER, seq=ts, received_at=ts), trip, ts)]


@contextmanager
def _transactions(store: Store) -> Iterator[list[int]]:
    """Counts the store's outermost units of work."""
    count = [0]
    depth = [0]
    inner = store.unit_of_work

    @contextmanager
    def counted() -> Iterator[None]:
        depth[0] += 1
        if depth[0] == 1:
            count[0] += 1
        try:
            with inner():
                yield
        finally:
            depth[0] -= 1

    store.unit_of_work = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        store.unit_of_work = inner  # type: ignore[method-assign]


def test_a_round_of_two_partitions_is_one_transaction(tmp_path: Path) -> None:
    store, clock, stage = _world(tmp_path)
    na, nb = trip_partition(A, P2), trip_partition(B, P2)
    stage.load()
    clock.set(T0 + 310_000)
    with _transactions(store) as transactions:
        outcomes = stage.process(
            [
                (na, [*_fixes(A, "gps-a", 0, 20), *_tamper(A, "lock-a", T0 + 200_000)]),
                (nb, [*_fixes(B, "gps-b", 0, 20), *_tamper(B, "lock-b", T0 + 210_000)]),
            ]
        )
    assert outcomes == [None, None]
    assert transactions == [1]
    assert {a["trip_id"] for a in store.list_alarms(type="LOCK_TAMPER")} == {A, B}
    assert store.count_telemetry()["fixes"] == 40
    assert (stage.rounds, stage.batches) == (1, 2)


def test_a_released_partition_leaves_the_engine_and_comes_back_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    store, clock, stage = _world(tmp_path)
    na, nb = trip_partition(A, P2), trip_partition(B, P2)
    clock.set(T0 + 310_000)
    stage.process([(na, _fixes(A, "gps-a", 0, 20)), (nb, _fixes(B, "gps-b", 0, 20))])
    with stage.gate.held() as engine:
        before = engine.trip_state(A)
    stage.release(na)
    assert store.engine_state(A) is not None  # checkpointed at the hand-over
    outcomes = stage.process([(na, _fixes(A, "gps-a", 20, 5)), (nb, _fixes(B, "gps-b", 20, 5))])
    assert isinstance(outcomes[0], RuntimeError) and outcomes[1] is None
    assert store.count_telemetry()["fixes"] == 45  # A's last five were refused, not stored
    with stage.gate.held() as engine, pytest.raises(RulesError):
        engine.trip_state(A)
    stage.acquire(na)  # back (another worker gave it up)
    stage.load()
    with stage.gate.held() as engine:
        assert engine.trip_state(A)["last_fix"] == before["last_fix"]
        assert engine.trip_state(B)["last_fix"]["ts"] == T0 + 24 * 10_000
    assert stage.process([(na, _fixes(A, "gps-a", 20, 5))]) == [None]
    assert store.count_telemetry()["fixes"] == 50


def test_a_partition_with_messages_waiting_is_judged_up_to_what_it_evaluated(
    tmp_path: Path,
) -> None:
    """Signal loss of A while A's partition has a backlog waits for the backlog; B, with none
    waiting, is judged at the wall clock."""
    store, clock, stage = _world(tmp_path)
    na, nb = trip_partition(A, P2), trip_partition(B, P2)
    clock.set(T0 + 200_000)
    stage.process([(na, _fixes(A, "gps-a", 0, 20)), (nb, _fixes(B, "gps-b", 0, 20))])
    later = T0 + 200_000 + 3_600_000  # an hour of silence by the wall clock
    clock.set(later)
    stage.tick(later, backlog={na})
    lost = {a["trip_id"] for a in store.list_alarms(type="SIGNAL_LOST")}
    assert lost == set()  # the horizon is the least evaluated of the waiting partitions
    stage.tick(later, backlog=set())
    lost = {a["trip_id"] for a in store.list_alarms(type="SIGNAL_LOST")}
    assert lost == {A, B}
