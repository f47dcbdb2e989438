"""Alarm-side benchmark: ``AlarmService.handle`` on a batch of engine events.

A busy batch of a fleet — trips going active, sealed, departing, arriving, raising and ending
alarms — applied to the store, as the pipeline does after the rules. Compared in the same run
with the baseline of one store transaction per call (what ``handle`` did before it used
``Store.unit_of_work``): the same events into a fresh database each time.

Prints one JSON object. Starts its own private TimescaleDB cluster (fsync on, as in
production); ``--sqlite`` measures the embedded store instead.

    .venv/bin/python -m bench.alarms [--quick] [--sqlite] [--trips N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from alerts import AlarmService, CountingAlertMetrics, LiveHub
from core.clock import ManualClock
from rules.events import (
    AlarmSignal,
    AlarmType,
    EngineEvent,
    EpisodeEnded,
    Milestone,
    MilestoneKind,
    TripStatus,
    TripStatusChanged,
)
from telemetry.store import Store, open_store
from tests.services import PostgresServer

T0_MS = 1_795_334_400_000


def trip_doc(i: int) -> dict:
    return {
        "trip_id": f"B-{i:05d}",
        "shipper": "pg" if i % 2 else "unilever",
        "status": "planned",
        "devices": [f"gps-{i:05d}"],
        "planned_start": T0_MS,
    }


def events(n_trips: int) -> list[EngineEvent]:
    """About ten events a trip: the milestones of a delivery and one alarm episode."""
    out: list[EngineEvent] = []
    for i in range(n_trips):
        tid, shipper, dev = f"B-{i:05d}", "pg" if i % 2 else "unilever", f"gps-{i:05d}"
        ts = T0_MS + i * 1000
        out.append(TripStatusChanged(tid, shipper, TripStatus.ACTIVE, ts, "sealed"))
        for k, kind in enumerate(
            (MilestoneKind.SEALED, MilestoneKind.DEPARTED, MilestoneKind.ARRIVED)
        ):
            stop = "S1" if kind is MilestoneKind.ARRIVED else None
            out.append(Milestone(tid, shipper, kind, ts + k, dev, stop, -16.9, 145.7))
        episode = f"{tid}:SPEEDING:{ts}"
        out.append(
            AlarmSignal(
                AlarmType.SPEEDING, tid, shipper, dev, ts + 5, episode, -16.9, 145.7, {"kmh": 99}
            )
        )
        out.append(EpisodeEnded(AlarmType.SPEEDING, tid, shipper, episode, ts + 6, {}))
        for k, kind in enumerate((MilestoneKind.UNSEALED, MilestoneKind.LEFT)):
            out.append(Milestone(tid, shipper, kind, ts + 7 + k, dev, "S1", -16.9, 145.7))
        out.append(TripStatusChanged(tid, shipper, TripStatus.COMPLETED, ts + 9, "unsealed"))
    return out


def fresh_store(make_url: Iterator[str]) -> Store:
    store = open_store(next(make_url))
    for shipper in ("pg", "unilever"):
        store.put_webhook(
            {
                "webhook_id": f"wh-{shipper}",
                "shipper": shipper,
                "url": "http://127.0.0.1:9/hook",
                "secret": "0123456789abcdef0123",
                "events": ["alarm.raised", "alarm.episode_ended", "trip.milestone"],
            }
        )
    return store


def run(store: Store, batch: list[EngineEvent], n_trips: int, grouped: bool) -> float:
    for i in range(n_trips):
        store.put_trip(trip_doc(i))
    if not grouped:
        # the baseline: every store call its own transaction
        # (a benchmark-only patch: the store has no switch for this, nor should it)
        store.unit_of_work = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    metrics = CountingAlertMetrics()
    service = AlarmService(store, ManualClock(T0_MS + 10_000_000), LiveHub(), metrics=metrics)
    t0 = time.perf_counter()
    service.handle(batch)
    seconds = time.perf_counter() - t0
    assert metrics.count("alerts_error", "event") == 0, metrics.counts
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sqlite", action="store_true", help="measure SQLite instead")
    p.add_argument("--trips", type=int, default=None)
    args = p.parse_args(argv)
    n_trips = args.trips or (50 if args.quick else 300)
    batch = events(n_trips)
    tmp = Path(tempfile.mkdtemp(prefix="cw-bench-alarms-"))
    server = None
    try:
        if args.sqlite:
            urls = (f"sqlite:///{tmp}/a{k}.sqlite" for k in range(100))
            store_kind = "sqlite"
        else:
            server = PostgresServer(durable=True).start()
            urls = (server.create_database() for _ in range(100))
            store_kind = "timescaledb"
        rounds = 1 if args.quick else 3
        per_call: list[float] = []
        grouped: list[float] = []
        for _ in range(rounds):
            for target, flag in ((per_call, False), (grouped, True)):
                store = fresh_store(urls)
                try:
                    target.append(run(store, batch, n_trips, flag))
                finally:
                    store.close()
        best_base, best_unit = min(per_call), min(grouped)
        print(
            json.dumps(
                {
                    "bench": "alarms",
                    "store": store_kind,
                    "events": len(batch),
                    "baseline_per_call_tx_events_per_s": round(len(batch) / best_base),
                    "unit_of_work_events_per_s": round(len(batch) / best_unit),
                    "ratio": round(best_base / best_unit, 2),
                    "rounds": rounds,
                }
            )
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
