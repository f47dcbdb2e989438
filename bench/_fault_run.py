"""One fault run: a fresh database, ``cargowatch serve``, a webhook receiver, a registered
simulated fleet with tamper triggers, its publisher, samplers; then drain and count.

The accelerated clock (``CARGOWATCH_CLOCK_*``) is shared by serve and the publishers. Phases
are in real seconds from the clock's anchor (when the fleet's time starts): ``warm_s`` of
steady publishing, the fault, ``after_s`` more; the fleet stops at a fixed simulated time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import _fault_count as count
from bench._fault_world import HookReceiver, Probe, RssSampler, Serve, env_for, pg_start
from core.clock import ScaledClock
from simulators import SimMessage, SimTrip, build_fleet, register
from tests.services import MosquittoServer, PostgresServer, free_port

log = logging.getLogger("bench.faults")

START_MS = 1_795_334_400_000  # 2026-11-22T08:00:00Z, simulated
ADMIN_KEY = "faults-admin-key-0123456789"
SHIPPER = "pg"
TAMPER_SEQ0 = 900_000_000  # far above the simulated locks' own sequence numbers


@dataclass(frozen=True)
class Config:
    quick: bool
    trucks: int
    speed: float  # simulated seconds per real second
    stagger_s: float  # simulated: trips start spread over this
    warm_s: float  # real seconds of steady fleet before each fault
    after_s: float  # real seconds of steady fleet after each fault's nominal end
    kills: int
    kill_gap_s: tuple[float, float]  # real seconds between serve answering and the next kill
    pg_down_s: float
    calib_s: float  # unthrottled flood that measures the sustained rate
    overload_s: float
    flood_devices: int
    hook_fail_sim_s: float
    tamper_every_s: float  # simulated, per truck while its trip is active
    drain_cap_s: float
    stall_s: float
    seed: int = 12


@dataclass
class Sample:
    t: float
    acked: int
    stored: int
    alarms: int
    pending: int  # deliveries still pending among events created up to ``cut``
    cut: int


def plan_tampers(
    fleet: list[SimTrip], every_s: float, end_ms: int, rng: random.Random
) -> tuple[list[SimMessage], dict[tuple[str, int, int], str]]:
    """``tamper`` events on each trip's lock while the trip is certainly active (from 2 min
    after departure to 2 min before its last arrival), about every ``every_s`` simulated
    seconds; and the trip of each (device, ts, seq)."""
    msgs: list[SimMessage] = []
    trip_of: dict[tuple[str, int, int], str] = {}
    seq = TAMPER_SEQ0
    for trip in fleet:
        lock = next(d["device_id"] for d in trip.devices if "lock" in d["topics"])
        arrivals = [v for k, v in trip.marks.items() if k.startswith("arrived:")]
        lo = trip.marks["departed"] + 120_000
        hi = min(max(arrivals) - 120_000, end_ms - 1000)
        t = lo + int(rng.uniform(0, every_s) * 1000)
        while t < hi:
            ts = t + rng.randrange(1000)
            body = orjson.dumps({"ts": ts, "event": "tamper", "seq": seq})
            msgs.append(SimMessage("lock", lock, body, ts))
            trip_of[(lock, ts, seq)] = trip.trip_id
            seq += 1
            t += int(every_s * rng.uniform(0.7, 1.3) * 1000)
    msgs.sort(key=lambda m: m.at_ms)
    return msgs, trip_of


class Publisher:
    """A ``bench._fault_pub`` process; its latest progress line is kept."""

    def __init__(self, spec: dict[str, Any], workdir: Path, name: str) -> None:
        self.name = name
        self.spec_path = workdir / f"{name}.json"
        self.out = workdir / f"{name}.out.json"
        self.spec_path.write_text(json.dumps({**spec, "out": str(self.out)}))
        self.progress: dict[str, Any] = {"acked_fixes": 0, "acked_locks": 0}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._fault_pub", str(self.spec_path)],
            stdout=subprocess.PIPE,
            stderr=(workdir / f"{name}.log").open("ab"),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.progress = json.loads(line)

    def wait_started(self, timeout_s: float = 30.0) -> None:
        """Until the process reports that it publishes."""
        deadline = time.monotonic() + timeout_s
        while "sent" not in self.progress and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def acked(self) -> int:
        return int(self.progress["acked_fixes"]) + int(self.progress["acked_locks"])

    def result(self, timeout_s: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(30)
        return json.loads(self.out.read_text())


class Run:
    """Everything of one fault, from a fresh database to its counts."""

    def __init__(
        self,
        name: str,
        cfg: Config,
        mq: MosquittoServer,
        pg: PostgresServer,
        workdir: Path,
        fault_nominal_s: float,
        index: int,
    ) -> None:
        self.name, self.cfg, self.mq, self.pg, self.workdir = name, cfg, mq, pg, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(cfg.seed * 100 + index)
        self.fleet = build_fleet(
            cfg.trucks,
            seed=cfg.seed * 100 + index,
            start_ms=START_MS,
            stagger_s=cfg.stagger_s,
            shipper_cycle=(SHIPPER,),
        )
        span_s = cfg.warm_s + fault_nominal_s + cfg.after_s
        self.end_ms = START_MS + int(span_s * cfg.speed * 1000)
        self.tampers, self.trip_of = plan_tampers(
            self.fleet, cfg.tamper_every_s, self.end_ms, self.rng
        )
        self.db_url = pg.create_database(f"faults_{name}_{index}")
        self.probe = Probe(self.db_url)
        lead_s = 8.0 + 0.06 * cfg.trucks  # serve starting, then the fleet registered
        self.anchor = time.time() + lead_s
        self.clock_spec = {
            "speed": cfg.speed,
            "start_ms": START_MS,
            "anchor_ms": int(self.anchor * 1000),
        }
        self.clock = ScaledClock(cfg.speed, start_ms=START_MS, anchor_ms=int(self.anchor * 1000))
        http_port = free_port()
        env = env_for(
            mq.url, self.db_url, http_port, ADMIN_KEY, f"cw-faults-{name}-{index}", self.clock_spec
        )
        self.serve = Serve(env, http_port, workdir / "serve.log")
        self.receiver = HookReceiver()
        self.rss = RssSampler(self.serve)
        self.publishers: list[Publisher] = []
        self.samples: list[Sample] = []
        self.cut_ms = 2**62  # deliveries created after this are not waited for
        self.webhook_id = ""
        self._stop = threading.Event()

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, flood_devices: int = 0) -> None:
        self.serve.start()
        self.serve.wait_http()
        self.rss.start()
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=self.serve.url, headers=headers, timeout=30) as api:
            body = {
                "url": self.receiver.url,
                "secret": "faults-hook-secret-0123456789",
                "shipper": SHIPPER,
            }
            r = api.post("/v1/webhooks", json=body)
            r.raise_for_status()
            self.webhook_id = r.json()["webhook_id"]
            for i in range(flood_devices):
                doc = {"device_id": f"flood-{i:05d}", "kind": "gps", "shipper": SHIPPER}
                api.post("/v1/devices", json=doc).raise_for_status()
        asyncio.run(register(self.fleet, self.serve.url, ADMIN_KEY))
        late = time.time() - self.anchor
        if late > 0:
            log.warning("%s: fleet registered %.1f s after its clock started", self.name, late)
        pickle_path = self.workdir / "fleet.pickle"
        import pickle

        pickle_path.write_bytes(pickle.dumps((self.fleet, self.tampers)))
        spec = {
            "mode": "fleet",
            "port": self.mq.port,
            "client_id": f"faults-fleet-{self.name}",
            "fleet": str(pickle_path),
            "end_ms": self.end_ms,
            **self.clock_spec,
        }
        self.publishers.append(Publisher(spec, self.workdir, "fleet"))
        threading.Thread(target=self._sample, daemon=True).start()

    def flood(self, rate: float, seconds: float, devices: int, tag: str) -> Publisher:
        spec = {
            "mode": "flood",
            "port": self.mq.port,
            "client_id": f"faults-{tag}-{self.name}",
            "rate": rate,
            "seconds": seconds,
            "devices": [f"flood-{i:05d}" for i in range(devices)],
            **self.clock_spec,
        }
        pub = Publisher(spec, self.workdir, tag)
        self.publishers.append(pub)
        return pub

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            t, cut = time.monotonic(), self.cut_ms
            totals = self.probe.totals(self.webhook_id, cut)
            if totals is None:
                continue
            acked = sum(p.acked for p in self.publishers)
            self.samples.append(
                Sample(t, acked, totals["stored"], totals["alarms"], totals["pending"], cut)
            )

    # -- timing --------------------------------------------------------------------------------
    def at(self, real_s: float) -> None:
        """Sleep until ``real_s`` seconds after the clock's anchor."""
        time.sleep(max(0.0, self.anchor + real_s - time.time()))

    def backlog_series(self) -> list[tuple[float, float]]:
        return [(s.t, float(s.acked - s.stored)) for s in self.samples]

    def _baseline(self, before: float) -> list[Sample]:
        return [s for s in self.samples if before - self.cfg.warm_s / 2 <= s.t < before]

    def offered_rate(self, before: float) -> float:
        """Messages acknowledged per second in the steady spell before ``before``."""
        base = self._baseline(before)
        if len(base) < 2:
            return 0.0
        return (base[-1].acked - base[0].acked) / max(base[-1].t - base[0].t, 1e-3)

    def threshold(self, fault_start: float) -> float:
        base = [float(s.acked - s.stored) for s in self._baseline(fault_start)]
        return count.backlog_threshold(base, self.offered_rate(fault_start))

    def _wait(
        self, done: Callable[[Sample], bool], state: Callable[[Sample], object], t0: float
    ) -> bool:
        """Until ``done`` holds for a fresh sample (True), or ``state`` has not changed for
        ``stall_s``, or ``drain_cap_s`` since ``t0`` has passed (False)."""
        last_state: object = None
        last_change = time.monotonic()
        while time.monotonic() - t0 < self.cfg.drain_cap_s:
            time.sleep(1.0)
            s = self.samples[-1] if self.samples else None
            if s is None or s.t < time.monotonic() - 1.5 or s.cut != self.cut_ms:
                continue
            if done(s):
                return True
            if state(s) != last_state:
                last_state, last_change = state(s), time.monotonic()
            elif time.monotonic() - last_change > self.cfg.stall_s:
                return False
        return False

    def abort(self) -> None:
        """Stop everything of a run that failed."""
        self._stop.set()
        for p in self.publishers:
            if p.proc.poll() is None:
                p.proc.terminate()
        self.serve.kill9()
        self.rss.stop()
        self.receiver.close()
        self.probe.close()
        # a fault that failed half-way may have left a service down: the next fault needs it
        if self.mq.proc is None or self.mq.proc.poll() is not None:
            self.mq.start()
        if not (self.pg.datadir / "postmaster.pid").exists():
            pg_start(self.pg)

    # -- the end -------------------------------------------------------------------------------
    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        results = [p.result(cfg.drain_cap_s) for p in self.publishers]
        fixes = count.as_keys(k for r in results for k in r["fixes"])
        locks = count.as_keys(k for r in results for k in r["locks"])
        triggers = [(self.trip_of[k], k[1]) for k in locks if k in self.trip_of]
        acked_total = len(fixes) + len(locks)
        # drained: everything acknowledged is stored and every trigger has an alarm; then
        # every webhook event created until that moment has been delivered
        t0 = time.monotonic()
        drained = self._wait(
            lambda s: s.stored >= acked_total and s.alarms >= len(triggers),
            lambda s: (s.stored, s.alarms),
            t0,
        )
        self.cut_ms = self.clock.now_ms()
        drained = self._wait(lambda s: s.pending == 0, lambda s: s.pending, t0) and drained
        drain_s = round(time.monotonic() - t0, 1)
        out: dict[str, Any] = {"fault": self.name}
        out.update(count.stored_counts("fixes", fixes, count.as_keys(self.probe.fix_keys())))
        out.update(count.stored_counts("locks", locks, count.as_keys(self.probe.lock_keys())))
        out.update(count.alarm_counts(triggers, self.probe.tamper_alarms()))
        out.update(count.milestone_counts(self.probe.milestones()))
        rows = self.probe.deliveries(self.webhook_id)
        expected = [d["event_id"] for d in rows if int(d["created_at"]) <= self.cut_ms]
        out.update(count.delivery_counts(expected, self.receiver.accepted))
        out["deliveries_dead"] = sum(1 for d in rows if d["status"] == "dead")
        out["delivery_attempts_max"] = max((int(d.get("attempts") or 0) for d in rows), default=0)
        out["duplicate_gaps_s"] = sorted(self.receiver.repeat_gaps_s)[:8]
        out["peak_rss_mb"] = round(self.rss.peak_mb, 1)
        out.update(extra)
        out["drained"] = drained
        out["drain_s"] = drain_s
        out["publisher_unacked"] = sum(int(r["unacked"]) for r in results)
        self._stop.set()
        out["sigterm_s"] = self.serve.terminate()
        out.update(self.serve.log_counts())
        out["serve_starts"] = self.serve.starts
        self.rss.stop()
        self.receiver.close()
        self.probe.close()
        return out
