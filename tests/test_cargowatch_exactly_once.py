"""Every accepted message becomes its alarms exactly once (``EngineGate.commit``).

A batch's telemetry, the rules' verdicts, alarms, outbox rows and the engine's checkpoint are
one transaction. These tests fail the store at each write of a batch (and at its commit),
with and without a process restart in between, then redeliver the batch as the broker would:
every stored trigger has its alarm exactly once, and nothing is half kept."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cargowatch.runtime import Runtime
from core.clock import ManualClock
from telemetry.errors import StoreUnavailable
from telemetry.ingest import RawMessage
from telemetry.store.sqlite import SqliteStore
from tests.api_world import T0, make_runtime, trip_doc

#: the store writes a batch with a tamper and an unlock away from the consignee goes through
FAULT_POINTS = (
    "insert_fixes",
    "insert_lock_events",
    "insert_alarm",
    "add_alarm_history",
    "enqueue_deliveries",
    "save_engine_states",
    "commit",
)


class FaultyStore(SqliteStore):
    """The real SQLite store that fails once at a chosen write (as a database outage
    would), or at the very end of the next unit of work (before its commit)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.fail_at: str | None = None
        self._depth = 0

    def _maybe_fail(self, point: str) -> None:
        if self.fail_at == point:
            self.fail_at = None
            raise StoreUnavailable(f"injected failure at {point}")

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[None]:
        with super().unit_of_work():
            self._depth += 1
            try:
                yield
                if self._depth == 1:
                    self._maybe_fail("commit")
            finally:
                self._depth -= 1

    def insert_fixes(self, fixes: Any) -> Any:
        self._maybe_fail("insert_fixes")
        return super().insert_fixes(fixes)

    def insert_lock_events(self, events: Any) -> Any:
        self._maybe_fail("insert_lock_events")
        return super().insert_lock_events(events)

    def insert_alarm(self, alarm: Any) -> None:
        self._maybe_fail("insert_alarm")
        super().insert_alarm(alarm)

    def add_alarm_history(self, alarm_id: str, entry: Any) -> None:
        self._maybe_fail("add_alarm_history")
        super().add_alarm_history(alarm_id, entry)

    def enqueue_deliveries(self, deliveries: Any) -> None:
        self._maybe_fail("enqueue_deliveries")
        super().enqueue_deliveries(deliveries)

    def save_engine_states(self, states: Any, removed: Any = (), *, at_ms: int = 0) -> None:
        self._maybe_fail("save_engine_states")
        super().save_engine_states(states, removed, at_ms=at_ms)


def open_world(
    tmp_path: Path, clock: ManualClock, checkpoint_every_s: float = 0.0
) -> tuple[Runtime, FaultyStore]:
    tmp_path.mkdir(exist_ok=True)
    store = FaultyStore(str(tmp_path / "api.sqlite"))
    store.migrate()
    runtime = make_runtime(tmp_path, clock, store=store)
    # 0: checkpoint with every batch (a fault point); else rarely: a restart re-runs the rest
    runtime.gate.checkpoint_every_s = checkpoint_every_s
    return runtime, store


def position(ts: int, lat: float = 31.45, lon: float = 121.10) -> RawMessage:
    body = {"ts": ts, "lat": lat, "lon": lon, "speed_kmh": 0.0, "seq": ts // 1000}
    return RawMessage("devices/gps-1/position", orjson.dumps(body), ts)


def lock(event: str, ts: int, **extra: Any) -> RawMessage:
    body = {"ts": ts, "event": event, "seq": ts // 1000, **extra}
    return RawMessage("devices/lock-1/lock", orjson.dumps(body), ts)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def start_trip(runtime: Runtime) -> None:
    runtime.register_device({"device_id": "gps-1", "kind": "gps", "shipper": "pg"})
    runtime.register_device({"device_id": "lock-1", "kind": "lock", "shipper": "pg"})
    runtime.create_trip(trip_doc("T1", "pg", ["gps-1", "lock-1"]))
    runtime.store.put_webhook(
        {
            "webhook_id": "wh1",
            "shipper": "pg",
            "url": "http://127.0.0.1:9/hook",
            "secret": "s",
            "events": ["alarm.raised", "trip.milestone"],
        }
    )
    runtime.pipeline.process([position(T0)])  # at the origin at the planned start: active
    assert runtime.engine.trip_state("T1")["status"] == "active"


def the_batch(clock: ManualClock) -> list[RawMessage]:
    t = T0 + 60_000
    clock.set(t + 1_000)
    return [
        position(t, 31.40, 121.20),
        lock("tamper", t + 100),
        lock("unlocked", t + 200, method="rfid"),
    ]


def alarm_counts(runtime: Runtime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in runtime.store.list_alarms(limit=1000):
        counts[a["type"]] = counts.get(a["type"], 0) + 1
    return counts


def deliveries_per_event(runtime: Runtime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in runtime.store.list_deliveries(limit=1000):
        counts[d["event_id"]] = counts.get(d["event_id"], 0) + 1
    return counts


def reference(tmp_path: Path, clock: ManualClock) -> tuple[dict[str, int], int]:
    runtime, _ = open_world(tmp_path, clock)
    try:
        start_trip(runtime)
        runtime.pipeline.process(the_batch(clock))
        return alarm_counts(runtime), len(runtime.store.list_deliveries(limit=1000))
    finally:
        runtime.close()


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "restarted"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_failure_at_any_write_of_a_batch_keeps_nothing_and_the_retry_raises_once(
    tmp_path: Path, clock: ManualClock, point: str, restart: bool
) -> None:
    expected, expected_deliveries = reference(tmp_path / "ref", clock)
    assert expected.get("LOCK_TAMPER") == 1 and expected.get("UNAUTHORIZED_UNLOCK") == 1

    clock.set(T0)
    runtime, store = open_world(tmp_path / "run", clock)
    start_trip(runtime)
    batch = the_batch(clock)
    fixes_before = store.count_telemetry()
    store.fail_at = point
    with pytest.raises(StoreUnavailable):
        runtime.pipeline.process(batch)
    assert store.fail_at is None, f"the batch never reached {point}"
    # Nothing of the batch was kept: no telemetry, no alarm, no outbox row.
    assert store.count_telemetry() == fixes_before
    assert "LOCK_TAMPER" not in alarm_counts(runtime)
    if restart:
        runtime.close()
        runtime, store = open_world(tmp_path / "run", clock)
    runtime.pipeline.process(batch)  # the broker redelivers the unacknowledged batch
    runtime.pipeline.process(batch)  # ... and once more after a crash past the commit
    assert alarm_counts(runtime) == expected
    per_event = deliveries_per_event(runtime)
    assert len(runtime.store.list_deliveries(limit=1000)) == expected_deliveries
    assert all(n == 1 for n in per_event.values()), per_event
    runtime.close()


def crash(runtime: Runtime) -> None:
    """Like ``kill -9``: no checkpoint at stop, the connection just goes."""
    runtime.store.close()


@pytest.mark.parametrize("every_s", [0.0, 3600.0], ids=["checkpointed", "re-run"])
def test_a_restart_mid_stop_continues_the_episode_without_a_second_alarm(
    tmp_path: Path, clock: ManualClock, every_s: float
) -> None:
    """A truck stands still away from any fence for an hour; the engine restarts after 20
    minutes. LONG_STOP (the trip's 45 min) is still raised at its threshold, once; no
    milestone is repeated."""
    runtime, _ = open_world(tmp_path, clock, every_s)
    start_trip(runtime)
    # drive away from the origin, then stand still away from any fence
    t = T0
    for i in range(1, 20):
        t = T0 + i * 10_000
        clock.set(t)
        runtime.pipeline.process([position(t, 31.45 - i * 0.0006, 121.10 + i * 0.0012)])
    lat, lon = 31.45 - 19 * 0.0006, 121.10 + 19 * 0.0012
    stop_start = t + 10_000

    def stand(until_ms: int, rt: Runtime) -> None:
        ts = rt.engine.trip_state("T1")["last_message_ts"] + 60_000
        while ts <= until_ms:
            clock.set(ts)
            rt.pipeline.process([position(ts, lat, lon)])
            rt.pipeline.tick(ts)
            ts += 60_000

    clock.set(stop_start)
    runtime.pipeline.process([position(stop_start, lat, lon)])
    stand(stop_start + 20 * 60_000, runtime)
    assert "LONG_STOP" not in alarm_counts(runtime)
    milestones = [e for e in runtime.store.trip_events("T1") if e.get("kind") == "milestone"]
    crash(runtime)  # a new process on the same database

    runtime, _ = open_world(tmp_path, clock, every_s)
    stand(stop_start + 44 * 60_000, runtime)
    assert "LONG_STOP" not in alarm_counts(runtime)
    stand(stop_start + 45 * 60_000, runtime)
    assert alarm_counts(runtime).get("LONG_STOP") == 1
    crash(runtime)  # and another one while the episode is open
    runtime, _ = open_world(tmp_path, clock, every_s)
    stand(stop_start + 60 * 60_000, runtime)
    assert alarm_counts(runtime).get("LONG_STOP") == 1
    again = [e for e in runtime.store.trip_events("T1") if e.get("kind") == "milestone"]
    assert [m["event_id"] for m in again] == [m["event_id"] for m in milestones]
    runtime.close()


@pytest.mark.parametrize("every_s", [0.0, 3600.0], ids=["checkpointed", "re-run"])
def test_a_three_hour_backlog_after_a_restart_is_evaluated_from_stored_history(
    tmp_path: Path, clock: ManualClock, every_s: float
) -> None:
    """The e-lock stores its events for ~3 hours while the truck's GPS unit reports live;
    the engine restarts meanwhile. When the backlog arrives, the unlock on the road 2 h 10 min
    ago is located by the GPS track of that time (from the store: the process that saw it
    is gone) and raised once, ``detected_late``; so is the tamper."""
    runtime, _ = open_world(tmp_path, clock, every_s)
    start_trip(runtime)

    def drive(first: int, last: int, rt: Runtime) -> None:
        for i in range(first, last + 1):
            ts = T0 + i * 60_000
            clock.set(ts)
            rt.pipeline.process([position(ts, 31.45 - i * 0.0006, 121.10 + i * 0.0012)])
            rt.pipeline.tick(ts)

    drive(1, 100, runtime)
    crash(runtime)
    runtime, _ = open_world(tmp_path, clock, every_s)
    drive(101, 160, runtime)
    late = alarm_counts(runtime).pop("LATE_ARRIVAL", 0)  # the small test plan's ETA is early
    assert alarm_counts(runtime) == ({"LATE_ARRIVAL": late} if late else {})

    now = T0 + 160 * 60_000
    backlog = {"ts": 0, "event": "heartbeat"}
    events = [dict(backlog, ts=T0 + k * 600_000, seq=k) for k in range(1, 16)]
    events.append({"ts": T0 + 30 * 60_000 + 5_000, "event": "unlocked", "seq": 100})
    events.append({"ts": T0 + 60 * 60_000 + 5_000, "event": "tamper", "seq": 101})
    message = RawMessage("devices/lock-1/lock", orjson.dumps(events), now)
    runtime.pipeline.process([message])
    runtime.pipeline.process([message])  # redelivered: nothing twice
    alarms = {a["type"]: a for a in runtime.store.list_alarms(limit=100)}
    counts = alarm_counts(runtime)
    counts.pop("LATE_ARRIVAL", None)
    assert counts == {"UNAUTHORIZED_UNLOCK": 1, "LOCK_TAMPER": 1}
    unlock = alarms["UNAUTHORIZED_UNLOCK"]
    assert unlock["details"].get("detected_late") is True
    assert not unlock["details"].get("position_unknown")
    # located where the GPS was at 00:30 (30 steps along the route), not at the last fix
    assert unlock["lat"] == pytest.approx(31.45 - 30 * 0.0006, abs=0.002)
    assert alarms["LOCK_TAMPER"]["details"].get("detected_late") is True
    runtime.close()
