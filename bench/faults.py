"""Fault benchmark (issue 12): does every acknowledged message become its alarms exactly once
through crashes, outages, restarts and overload?

A private Mosquitto and TimescaleDB (fsync on, tests/services.py), ``cargowatch serve`` as a
subprocess, a simulated fleet on active trips publishing through paho at QoS 1 on the engine's
accelerated clock, ``tamper`` triggers that must each raise one LOCK_TAMPER, and a webhook
receiver. One fault at a time, each against a fresh database and fleet:

- ``kill9``: ``kill -9`` of serve at random moments, restarted each time, while publishing;
- ``postgres_down``: PostgreSQL stopped (fast shutdown) and started again on the same port;
- ``mosquitto_restart``: the broker stopped and started on the same port;
- ``overload_kill9``: 2x the sustained rate (measured first, unthrottled) then ``kill -9``;
- ``webhook_down``: the receiver answers 500 for a simulated hour, then recovers.

After each fault the publishers finish, the system drains, and the database is counted
against what the broker acknowledged (PUBACK). Prints ONE JSON object on stdout
(``{"faults": [...], "config": {...}}``); logs go to stderr. See docs/reliability.md.

    .venv/bin/python -m bench.faults [--quick] [--only kill9,webhook_down] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._fault_count import markdown_table, recover_s
from bench._fault_run import Config, Run
from bench._fault_world import mosquitto_restart, pg_start, pg_stop
from tests.services import MosquittoServer, PostgresServer

log = logging.getLogger("bench.faults")

QUICK = Config(
    quick=True,
    trucks=60,
    speed=120.0,
    stagger_s=600.0,
    warm_s=12.0,
    after_s=8.0,
    kills=3,
    kill_gap_s=(0.5, 3.0),
    pg_down_s=10.0,
    calib_s=6.0,
    overload_s=10.0,
    flood_devices=100,
    hook_fail_sim_s=3600.0,
    tamper_every_s=240.0,
    drain_cap_s=180.0,
    stall_s=30.0,
)
FULL = Config(
    quick=False,
    trucks=400,
    speed=60.0,
    stagger_s=3600.0,
    warm_s=40.0,
    after_s=30.0,
    kills=8,
    kill_gap_s=(0.5, 5.0),
    pg_down_s=60.0,
    calib_s=15.0,
    overload_s=60.0,
    flood_devices=200,
    hook_fail_sim_s=3600.0,
    tamper_every_s=300.0,
    drain_cap_s=600.0,
    stall_s=120.0,
)


def fault_kill9(run: Run) -> dict[str, Any]:
    """kill -9 at a random moment after serve answers, restart at once; ``kills`` times."""
    lo, hi = run.cfg.kill_gap_s
    for i in range(run.cfg.kills):
        time.sleep(run.rng.uniform(lo, hi))
        run.serve.kill9()
        log.info("%s: kill -9 #%d", run.name, i + 1)
        run.serve.start()
        run.serve.wait_http()
    return {"kills": run.cfg.kills}


def fault_postgres(run: Run) -> dict[str, Any]:
    pg_stop(run.pg)
    log.info("%s: PostgreSQL stopped for %g s", run.name, run.cfg.pg_down_s)
    time.sleep(run.cfg.pg_down_s)
    pg_start(run.pg)
    return {"down_s": run.cfg.pg_down_s}


def fault_mosquitto(run: Run) -> dict[str, Any]:
    t0 = time.monotonic()
    mosquitto_restart(run.mq)
    return {"restart_s": round(time.monotonic() - t0, 2)}


def fault_overload(run: Run) -> dict[str, Any]:
    """Measure what serve sustains under an unthrottled flood, offer twice that for
    ``overload_s``, then kill -9 and restart."""
    cfg = run.cfg
    fleet_rate = run.offered_rate(time.monotonic())
    calib = run.flood(0, cfg.calib_s, cfg.flood_devices, "calibrate")
    calib.wait_started()
    t0 = time.monotonic()
    time.sleep(cfg.calib_s)
    # serve's rate over the last two thirds, once the backlog had built up
    window = [s for s in run.samples if s.t >= t0 + cfg.calib_s / 3]
    sustained, serve_bound = 0.0, False
    if len(window) >= 2:
        first, last = window[0], window[-1]
        sustained = (last.stored - first.stored) / (last.t - first.t)
        serve_bound = last.acked - last.stored > first.acked - first.stored
    flood_rate = max(2 * sustained - fleet_rate, 100.0)
    log.info("%s: sustained %.0f msg/s; flooding %.0f msg/s", run.name, sustained, flood_rate)
    pub = run.flood(flood_rate, cfg.overload_s, cfg.flood_devices, "overload")
    pub.wait_started()
    t1 = time.monotonic()
    time.sleep(cfg.overload_s)
    offered = pub.progress.get("rate", 0.0)
    stored = [s for s in run.samples if s.t >= t1]
    run.serve.kill9()
    log.info("%s: kill -9 after %g s of overload", run.name, cfg.overload_s)
    run.serve.start()
    run.serve.wait_http()
    during = 0.0
    if len(stored) >= 2:
        during = (stored[-1].stored - stored[0].stored) / (stored[-1].t - stored[0].t)
    return {
        "sustained_msg_s": round(sustained),
        "sustained_serve_bound": serve_bound,  # False: the flood could not outrun serve
        "offered_msg_s": round(float(offered) + fleet_rate),
        "stored_msg_s_during_overload": round(during),
        "overload_s": cfg.overload_s,
    }


def fault_webhook(run: Run) -> dict[str, Any]:
    run.receiver.failing = True
    time.sleep(run.cfg.hook_fail_sim_s / run.cfg.speed)
    run.receiver.failing = False
    run.cut_ms = run.clock.now_ms()  # recovery: every event raised so far is delivered
    return {"failing_sim_s": run.cfg.hook_fail_sim_s, "answered_500": run.receiver.refused}


FAULTS: dict[str, tuple[Callable[[Run], dict[str, Any]], Callable[[Config], float], str]] = {
    "kill9": (fault_kill9, lambda c: c.kills * 6.0, "kill -9 of serve at random points, restarted"),
    "postgres_down": (fault_postgres, lambda c: c.pg_down_s + 3, "PostgreSQL stopped, started"),
    "mosquitto_restart": (fault_mosquitto, lambda c: 3.0, "Mosquitto restarted (same port)"),
    "overload_kill9": (
        fault_overload,
        lambda c: c.calib_s + c.overload_s + 5,
        "2x overload, then kill -9",
    ),
    "webhook_down": (
        fault_webhook,
        lambda c: c.hook_fail_sim_s / c.speed,
        "webhook receiver 500 for 1 sim h",
    ),
}


def run_fault(
    name: str, index: int, cfg: Config, mq: MosquittoServer, pg: PostgresServer, workdir: Path
) -> dict[str, Any]:
    action, nominal, what = FAULTS[name]
    log.info("== %s: %s", name, what)
    run = Run(name, cfg, mq, pg, workdir / name, nominal(cfg), index)
    try:
        run.setup(cfg.flood_devices if name == "overload_kill9" else 0)
        run.at(cfg.warm_s)
        start = time.monotonic()
        extra = action(run)
    except Exception as exc:  # one broken fault must not hide the others' figures
        log.exception("%s failed", name)
        run.abort()
        return {"fault": name, "description": what, "error": f"{type(exc).__name__}: {exc}"}
    end = time.monotonic()
    extra["fault_s"] = round(end - start, 1)
    threshold = 0.0 if name == "webhook_down" else run.threshold(start)
    result = run.finish(extra)
    # recovery, from the samples taken until the end of the drain: the backlog (acknowledged
    # minus stored) back to its steady level; for the webhook, no event older than the
    # receiver's recovery still pending
    if name == "webhook_down":
        series = [(s.t, float(s.pending)) for s in run.samples]
    else:
        series = run.backlog_series()
    result["recover_s"] = recover_s(series, end, threshold)
    result["description"] = what
    log.info("== %s: %s", name, json.dumps(result))
    return result


def _commit() -> str:
    """The code measured: HEAD (+dirty), or BENCH_COMMIT for an exported tree (git archive)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="60 trucks, 10 s faults (minutes)")
    p.add_argument("--only", help="comma-separated faults: " + ", ".join(FAULTS))
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--table", metavar="JSON", help="only print the table of a saved output")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())["faults"]))
        return 0
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    cfg = QUICK if args.quick else FULL
    if args.seed is not None:
        cfg = Config(**{**cfg.__dict__, "seed": args.seed})
    names = args.only.split(",") if args.only else list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        p.error(f"unknown fault(s): {', '.join(unknown)}")
    random.seed(cfg.seed)
    workdir = Path(tempfile.mkdtemp(prefix="cw-faults-"))
    workdir.chmod(0o755)  # the cluster may run as the postgres user (tests/services.py)
    log.info("work directory %s", workdir)
    t0 = time.monotonic()
    faults = []
    (workdir / "mq").mkdir()
    (workdir / "pg").mkdir()
    mq = MosquittoServer(workdir / "mq").start()
    pg = PostgresServer(workdir / "pg", durable=True)
    try:
        pg.start()
        for i, name in enumerate(names):
            faults.append(run_fault(name, i, cfg, mq, pg, workdir))
    finally:
        mq.stop()
        pg.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    config = {
        **{k: v for k, v in cfg.__dict__.items()},
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - t0, 1),
        "command": "python -m bench.faults" + (" --quick" if args.quick else ""),
    }
    print(json.dumps({"faults": faults, "config": config}))
    sys.stderr.write(markdown_table(faults) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
