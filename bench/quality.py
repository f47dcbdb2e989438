"""The desk's two numbers: false alarms per 1,000 trip-hours on normal trips, and recall on
incidents — through the real pipeline and engine, in process (SQLite, manual clock), on the
simulators' real road shapes with the GNSS error model of :mod:`simulators.gnss`.

Two kinds of world, each a fresh runtime fed in publish order (messages batched per 5 s of
publish time, the clock set to the batch's last publish time, wall-clock rules ticked
every 5 simulated seconds):

- **normal**: a fleet of normal trips with mixed noise (half ``all``, the rest one source
  each or clean). Every alarm there is a false alarm.
- **incidents**: for every noise kind, one trip of every incident scenario (the original
  catalogue and the GNSS / contract v2 ones). Expected alarms matched by
  ``simulators.verify.match_alarms`` give the recall; anything else is listed.

Prints one JSON object: ``false_alarms_per_1000_trip_hours`` (total and by type),
``recall`` (total and by type, plus by noise kind), ``detection_delay_s`` percentiles by type
(event time of the triggering message → ``raised_at``), ``flapping_milestones`` (a
milestone repeated, a ``left``/``departed`` before the truck really left, an ``arrived``
more than 10 min before it really arrived), withdrawn alarms, failures, sizes and timings.

    .venv/bin/python -m bench.quality [--quick | --full] [--seed N] [--rules JSON]

``--quick``: 150 normal trips; default: 2,000; ``--full``: normal trips until ≥ 10,000
trip-hours. The incident worlds are the same in every mode. ``--rules`` sets thresholds on
every trip (its ``rules`` object), e.g. ``'{"fence_exit_margin_m": 0}'``, to see what a
threshold trades.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from core.clock import ManualClock
from simulators import (
    GNSS_INCIDENTS,
    INCIDENTS,
    NOISE_KINDS,
    SimTrip,
    build_fleet,
    iter_fleet_messages,
)
from simulators.verify import match_alarms, to_ms
from telemetry.ingest import RawMessage

T0_MS = 1_795_334_400_000  # 2026-11-22T08:00:00Z
TICK_MS = 5_000
#: messages are processed in batches of 5 s of publish time (one SQLite commit each, as a
#: busy live feed would): a detection delay is measured up to 5 s long
BATCH_MS = 5_000
#: an ``arrived`` this much before the truck really stopped is a false arrival
EARLY_ARRIVAL_MS = 600_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def trip_hours(trip: SimTrip) -> float:
    """Hours the trip is monitored: from sealing to the final unseal."""
    return max(trip.marks["unsealed"] - trip.marks["sealed"], 0) / 3_600_000.0


def run_world(trips: Sequence[SimTrip], workdir: Path, name: str) -> dict[str, Any]:
    """Feed ``trips`` through a fresh in-process runtime; their alarms and milestones."""
    clock = ManualClock(T0_MS)
    runtime = Runtime.open(
        Settings(db_url=f"sqlite:///{workdir}/{name}.sqlite", mqtt_url=None), clock=clock
    )
    started = time.perf_counter()
    n_msgs = 0
    try:
        for sim in trips:
            for dev in sim.devices:
                runtime.register_device(dev)
            for g in sim.geofences:
                runtime.put_geofence(g)
            runtime.create_trip(sim.trip)
        last_tick = T0_MS
        batch: list[RawMessage] = []

        def tick_until(t: int) -> None:
            nonlocal last_tick
            while last_tick + TICK_MS <= t:
                last_tick += TICK_MS
                clock.set(last_tick)
                runtime.pipeline.tick()

        def flush() -> None:
            if batch:
                clock.set(batch[-1].received_at)
                runtime.pipeline.process(batch)
                batch.clear()

        for m in iter_fleet_messages(trips):
            if batch and m.at_ms // BATCH_MS != batch[-1].received_at // BATCH_MS:
                flush()
            if not batch:
                tick_until(m.at_ms)
            batch.append(RawMessage(m.topic(), m.payload, m.at_ms))
            n_msgs += 1
        flush()
        tick_until(clock.now_ms() + 3_600_000)
        alarms = runtime.store.list_alarms(limit=1_000_000)
        events = {t.trip_id: runtime.store.trip_events(t.trip_id) for t in trips}
    finally:
        runtime.close()
    seconds = time.perf_counter() - started
    log(f"  {name}: {len(trips)} trips, {n_msgs} messages, {len(alarms)} alarms, {seconds:.0f} s")
    return {"alarms": alarms, "events": events, "messages": n_msgs, "seconds": seconds}


def flapping(trip: SimTrip, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Milestones a shipper should not have received: repeats, a ``left``/``departed``
    before the truck left, an ``arrived`` long before it stopped there."""
    out = []
    seen: Counter[tuple[Any, Any]] = Counter()
    marks = trip.marks
    for e in events:
        if e.get("kind") != "milestone":
            continue
        kind, stop, ts = e.get("milestone"), e.get("stop_id"), int(e.get("ts", 0))
        seen[(kind, stop)] += 1
        why = None
        if seen[(kind, stop)] > 1:
            why = "repeated"
        elif kind == "departed" and ts < marks["departed"]:
            why = "departed while parked at the origin"
        elif kind == "left" and f"left:{stop}" in marks and ts < marks[f"left:{stop}"]:
            why = "left while parked at the stop"
        elif kind == "arrived" and ts < marks.get(f"arrived:{stop}", ts) - EARLY_ARRIVAL_MS:
            why = "arrived long before the truck did"
        if why:
            out.append({"trip_id": trip.trip_id, "milestone": kind, "stop_id": stop, "why": why})
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "n": int(a.size),
        "p50": round(float(p50), 1),
        "p90": round(float(p90), 1),
        "p99": round(float(p99), 1),
        "max": round(float(a.max()), 1),
    }


def _brief(a: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("stop_id", "geofence_id", "event", "withdrawn", "detected_late", "position_unknown")
    d = a.get("details") or {}
    return {
        "type": a.get("type"),
        "trip_id": a.get("trip_id"),
        "details": {k: d[k] for k in keep if k in d},
    }


def normal_fleet(mode: str, seed: int) -> list[SimTrip]:
    """Normal trips with mixed noise: 150 (quick), 2,000, or ≥ 10,000 trip-hours (full)."""
    if mode != "full":
        n = 150 if mode == "quick" else 2_000
        return build_fleet(n, seed=seed, start_ms=T0_MS + 60_000, noise="mixed", stagger_s=7_200)
    trips: list[SimTrip] = []
    chunk = 0
    while sum(trip_hours(t) for t in trips) < 10_000.0:
        part = build_fleet(
            1_000,
            seed=seed * 1_000 + chunk,
            start_ms=T0_MS + 60_000,
            noise="mixed",
            stagger_s=7_200,
            device_prefix=f"c{chunk}-",
        )
        trips += part
        chunk += 1
    return trips


def with_rules(trips: list[SimTrip], rules: dict[str, Any]) -> list[SimTrip]:
    """Set threshold overrides on every trip document (in place)."""
    for t in trips:
        t.trip["rules"] = {**t.trip.get("rules", {}), **rules}
    return trips


def measure(
    mode: str, seed: int, workdir: Path, rules: dict[str, Any] | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    rules = rules or {}
    out: dict[str, Any] = {"mode": mode, "seed": seed, "rules": rules}
    # -- normal trips: false alarms -------------------------------------------------------
    log(f"normal trips ({mode}) ...")
    normal = with_rules(normal_fleet(mode, seed), rules)
    hours = sum(trip_hours(t) for t in normal)
    worlds = [(f"normal-{k}", normal[k : k + 1_000]) for k in range(0, len(normal), 1_000)]
    false_by_type: Counter[str] = Counter()
    flaps: list[dict[str, Any]] = []
    withdrawn = 0
    false_examples: list[dict[str, Any]] = []
    msgs = 0
    for name, trips in worlds:
        res = run_world(trips, workdir, name)
        msgs += res["messages"]
        by_id = {t.trip_id: t for t in trips}
        for a in res["alarms"]:
            false_by_type[str(a["type"])] += 1
            withdrawn += bool((a.get("details") or {}).get("withdrawn"))
            if len(false_examples) < 20:
                false_examples.append(_brief(a))
        for tid, evs in res["events"].items():
            flaps += flapping(by_id[tid], evs)
    per_k = {k: round(v / hours * 1_000.0, 3) for k, v in sorted(false_by_type.items())}
    out["normal"] = {
        "trips": len(normal),
        "trip_hours": round(hours, 1),
        "messages": msgs,
    }
    out["false_alarms_per_1000_trip_hours"] = {
        "total": round(sum(false_by_type.values()) / hours * 1_000.0, 3),
        "by_type": per_k,
        "count": dict(sorted(false_by_type.items())),
        "withdrawn": withdrawn,
        "examples": false_examples,
    }
    # -- incidents under every noise kind: recall -------------------------------------------
    incidents = [*INCIDENTS, *GNSS_INCIDENTS]
    expected: Counter[str] = Counter()
    matched: Counter[str] = Counter()
    by_kind: dict[str, dict[str, int]] = {}
    delays: dict[str, list[float]] = defaultdict(list)
    failures: list[dict[str, Any]] = []
    unexpected: Counter[str] = Counter()
    for k, kind in enumerate(NOISE_KINDS):
        log(f"incidents under noise '{kind}' ...")
        trips = with_rules(
            build_fleet(
                len(incidents),
                seed=seed * 100 + k,
                start_ms=T0_MS + 60_000,
                incidents=incidents,
                noise=kind,
                device_prefix=f"{kind}-",
            ),
            rules,
        )
        res = run_world(trips, workdir, f"incidents-{kind}")
        msgs += res["messages"]
        verdict = match_alarms(trips, res["alarms"])
        scen = {t.trip_id: t.scenario for t in trips}
        for t in trips:
            expected.update(e["type"] for e in t.expected)
        for exp, alarm in verdict.matched:
            matched[exp["type"]] += 1
            ts, raised = to_ms(alarm.get("ts")), to_ms(alarm.get("raised_at"))
            if ts is not None and raised is not None:
                delays[exp["type"]].append((raised - ts) / 1000.0)
        n_exp = sum(len(t.expected) for t in trips)
        by_kind[kind] = {"expected": n_exp, "matched": len(verdict.matched)}
        for e in verdict.missing:
            failures.append({"noise": kind, "missing": e["type"], "scenario": e["scenario"]})
        for a in verdict.unexpected:
            unexpected[str(a.get("type"))] += 1
            failures.append(
                {
                    "noise": kind,
                    "unexpected": _brief(a),
                    "scenario": scen.get(str(a.get("trip_id"))),
                }
            )
        by_id = {t.trip_id: t for t in trips}
        for tid, evs in res["events"].items():
            for f in flapping(by_id[tid], evs):
                flaps.append({**f, "noise": kind, "scenario": by_id[tid].scenario})
    total_exp = sum(expected.values())
    out["recall"] = {
        "total": round(sum(matched.values()) / total_exp, 4) if total_exp else None,
        "by_type": {t: round(matched[t] / n, 4) for t, n in sorted(expected.items())},
        "by_noise": {
            k: round(v["matched"] / v["expected"], 4) if v["expected"] else None
            for k, v in by_kind.items()
        },
        "expected": total_exp,
        "unexpected_in_incident_runs": dict(sorted(unexpected.items())),
    }
    out["detection_delay_s"] = {t: percentiles(v) for t, v in sorted(delays.items())}
    out["flapping_milestones"] = len(flaps)
    out["flapping_examples"] = flaps[:20]
    out["failures"] = failures
    out["incident_worlds"] = {
        "noise_kinds": list(NOISE_KINDS),
        "scenarios": incidents,
        "trips": len(incidents) * len(NOISE_KINDS),
    }
    out["messages"] = msgs
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="150 normal trips")
    size.add_argument("--full", action="store_true", help="normal trips for ≥ 10,000 h")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rules", type=json.loads, default={}, help="threshold overrides (JSON)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    with tempfile.TemporaryDirectory(prefix="cw-quality-") as tmp:
        result = measure(mode, args.seed, Path(tmp), args.rules)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
