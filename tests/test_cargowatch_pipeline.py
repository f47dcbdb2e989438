"""One batch through the data flow (``cargowatch.pipeline``): dead letters, duplicates, and
the evaluation horizon of the wall-clock rules while received messages wait."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cargowatch.runtime import Runtime
from core.clock import ManualClock
from telemetry.ingest import RawMessage
from tests.api_world import T0, make_runtime, trip_doc


@pytest.fixture
def world(tmp_path: Path) -> tuple[Runtime, ManualClock]:
    clock = ManualClock(T0)
    runtime = make_runtime(tmp_path, clock)
    runtime.register_device({"device_id": "gps-1", "kind": "gps", "shipper": "pg"})
    runtime.create_trip(trip_doc("T1", "pg", ["gps-1"]))
    yield runtime, clock
    runtime.close()


def fix(ts: int, received_at: int | None = None) -> RawMessage:
    body = {"ts": ts, "lat": 31.45, "lon": 121.10, "speed_kmh": 0.0}
    return RawMessage("devices/gps-1/position", orjson.dumps(body), received_at or ts)


def signal_lost(runtime: Runtime) -> int:
    return len(runtime.store.list_alarms(type="SIGNAL_LOST", limit=100))


def test_bad_and_duplicate_messages_are_kept_apart(world: tuple[Runtime, ManualClock]) -> None:
    runtime, _ = world
    report = runtime.pipeline.process(
        [fix(T0), fix(T0), RawMessage("devices/gps-1/position", b"{oops", T0)]
    )
    assert (report.fixes, report.duplicates, report.dead_letters) == (1, 1, 1)
    assert [d["reason"] for d in runtime.store.dead_letters()] == ["bad_json"]
    again = runtime.pipeline.process([fix(T0)])
    assert (again.fixes, again.duplicates) == (0, 1)


def test_no_signal_loss_while_received_messages_wait(world: tuple[Runtime, ManualClock]) -> None:
    runtime, clock = world
    runtime.pipeline.process([fix(T0)])
    assert runtime.engine.trip_state("T1")["status"] == "active"
    clock.advance(700)  # past signal_lost_s (600 s) of wall-clock time
    # a batch received at T0 + 5 s is still queued: the truck is not known to be silent
    runtime.pipeline.tick(backlog=True)
    assert signal_lost(runtime) == 0
    assert runtime.pipeline.horizon(clock.now_ms(), backlog=True) == T0
    # the queued fix is evaluated: the horizon moves to its receipt, still nothing silent
    runtime.pipeline.process([fix(T0 + 5_000)])
    runtime.pipeline.tick(backlog=True)
    assert signal_lost(runtime) == 0
    # nothing waits any more: 695 s of silence is a signal loss
    runtime.pipeline.tick(backlog=False)
    assert signal_lost(runtime) == 1


def test_horizon_never_goes_back(world: tuple[Runtime, ManualClock]) -> None:
    runtime, clock = world
    clock.advance(60)
    idle = runtime.pipeline.horizon(clock.now_ms(), backlog=False)
    assert idle == clock.now_ms()
    # a backlog appears: what was judged idle stays judged
    assert runtime.pipeline.horizon(clock.now_ms() + 1_000, backlog=True) == idle
    runtime.pipeline.process([fix(T0 + 30_000, received_at=T0 + 90_000)])
    assert runtime.pipeline.horizon(T0 + 100_000, backlog=True) == T0 + 90_000


def test_backlog_counts_queued_batches(world: tuple[Runtime, ManualClock]) -> None:
    runtime, _ = world
    assert runtime.backlog() is False
    runtime.queue.put_nowait(object())  # type: ignore[arg-type]
    assert runtime.backlog() is True


def test_batch_metrics_by_value(world: tuple[Runtime, ManualClock]) -> None:
    runtime, clock = world
    m = runtime.metrics
    clock.advance(3)  # the batch was received 3 s ago
    runtime.pipeline.process([fix(T0), fix(T0), RawMessage("devices/gps-1/position", b"{", T0)])
    assert m.value("cargowatch_messages_in_total") == 3
    assert m.value("cargowatch_fixes_stored_total") == 1
    assert m.value("cargowatch_duplicates_total") == 1
    assert m.value("cargowatch_dead_letters_total", reason="bad_json") == 1
    assert m.value("cargowatch_batch_size_count") == 1
    assert m.value("cargowatch_batch_size_sum") == 3
    assert m.value("cargowatch_last_batch_lag_seconds") == 3.0
    assert m.value("cargowatch_ingest_lag_seconds_sum") == 3.0
    assert m.value("cargowatch_ingest_lag_seconds_bucket", le="2.0") == 0
    assert m.value("cargowatch_ingest_lag_seconds_bucket", le="5.0") == 1
    assert m.value("cargowatch_rule_errors_total") == 0
