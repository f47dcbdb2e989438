"""The live load ladder (issue 16): what one deployment sustains, publish to alarm on the desk.

    python -m bench.live [--quick] [--modes mosquitto,nats_1,nats_2] [--out FILE]
                         [--rates 4000,8000] [--step-s S] [--profile DIR]

For each mode a fresh database in a private TimescaleDB (fsync on), a private broker, and the
engine as real processes:

- ``mosquitto``: ``cargowatch serve --mqtt`` (one process: ingest, engine, API);
- ``nats_1`` / ``nats_2``: ``cargowatch serve --bus --workers 0`` (API, live feed, escalation)
  plus one / two ``cargowatch worker`` processes (the engine), NATS JetStream with 4 device and
  4 trip partitions (``--partitions P``: P of each); devices publish over the NATS server's
  MQTT listener.

A fleet of active trips (full: 1,400 trips with 21,000 GPS units and 1,400 locks; ``--quick``:
600 / 9,000 / 600) is registered first. Then, step by step at rising fixed rates (full: 60 s a
step; quick: 10 s), separate publisher processes (``bench._live_pub``, QoS 1) send fixes
stamped with their send time (each unit at its own phase: the units are dealt out in a fixed
shuffled order, as a fleet's trackers report independently; ``--order by-trip`` sends a trip's
15 units back to back instead, the engine's worst case: every trip then has up to 15 fixes in
one batch, and the rules take a round per fix of a trip), plus timed ``tamper`` triggers, each
on a lock of its own; latency = the alarm's arrival on ``/v1/live`` (an SSE reader in this
process) − the trigger's ``ts``. Between steps the backlog drains. Before the first step, an
unreported warm-up (10 s at the first rate) lets every worker load its trips. Per step: offered
and achieved rates, stored rows/s, p50/p99/max latency, peak RSS and CPU time per stored
message of the engine processes, and the backlog left at the step's end.
``max_sustained_msg_per_s`` = the highest step with p99 ≤ 2 s, every trigger alarmed, and at
most 2 s of input waiting at its end.
Then an **overload** step at twice that rate for a step's length (``--no-overload`` skips it):
its stored rate against the sustained rate, peak memory, and whether and how fast every
message published was stored afterwards (``drain_s``).
Prints one JSON object keyed by mode (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson

from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from telemetry.store import open_store
from tests.bus_support import lease_pids, spawn, trip_doc, wait_for
from tests.nats_service import NatsServer
from tests.services import MosquittoServer, PostgresServer, free_port

ADMIN = "cw_bench_live_admin_key_000000000001"
PUB_USER, PUB_PASSWORD = "bench-pub", "bench-pub-secret"
PARTITIONS = 4
ORDER_SEED = 16  # the fleet's publishing order (shuffled)
PER_PUBLISHER = 8000  # msg/s one publisher process is asked for at most
CLK = os.sysconf("SC_CLK_TCK")

FULL = {
    "trips": 1400,
    "gps": 15,
    "rates": [2000, 4000, 6000, 8000, 10000, 12000, 16000, 20000],
    "step_s": 60.0,
    "triggers": 22,
}
QUICK = {
    # 600 trips: 9,000 GPS units report about once a second at 10k msg/s (with 100 trips
    # each unit sent 6-7 fixes a second, far from a truck, and the rules ran many rounds)
    "trips": 600,
    "gps": 15,
    "rates": [2000, 4000, 8000, 10000, 12000, 16000, 20000],
    "step_s": 10.0,
    "triggers": 8,
}


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def seed(db: str, trips: int, gps_per_trip: int) -> tuple[list[str], list[str]]:
    """Register the fleet (through the services, as the API would); (gps ids, lock ids)."""
    runtime = Runtime.open(Settings(db_url=db, admin_key=ADMIN))
    now = int(time.time() * 1000)
    gps: list[str] = []
    locks: list[str] = []
    try:
        for k in range(trips):
            units = [f"g{k}.{j}" for j in range(gps_per_trip)]
            lock = f"lock-{k}"
            runtime.create_trip(trip_doc(f"LIVE-{k}", "pg", [*units, lock], now))
            gps += units
            locks.append(lock)
    finally:
        runtime.close()
    return gps, locks


class LiveReader:
    """Reads ``/v1/live`` (SSE) in a thread like a desk would, keeping every event but
    positions (counted): the test suite's reader parses and keeps every event, which at
    10k positions a second cost this process a quarter of a core on the same 2 cores as the
    system under test."""

    def __init__(self, base_url: str, key: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []  # time.time() each kept event arrived
        self.positions = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._url = f"{base_url}/v1/live"
        self._key = key
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self._key}"}
        with (
            httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as http,
            http.stream("GET", self._url, headers=headers) as response,
        ):
            self.connected.set()
            rest = b""
            for chunk in response.iter_raw():
                if self._stop.is_set():
                    return
                blocks = (rest + chunk).split(b"\n\n")
                rest = blocks.pop()
                now = time.time()
                for block in blocks:
                    if block.startswith(b"event: position"):
                        self.positions += 1
                        continue
                    kind, data = "", None
                    for line in block.split(b"\n"):
                        if line.startswith(b"event: "):
                            kind = line[7:].decode()
                        elif line.startswith(b"data: "):
                            data = orjson.loads(line[6:])
                    if data is not None:
                        self.times.append(now)
                        self.events.append((kind, data))

    def close(self) -> None:
        self._stop.set()


class Mode:
    """One mode's broker and engine processes."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        db: str,
        env: dict[str, str],
        partitions: int = PARTITIONS,
    ) -> None:
        self.name = name
        self.partitions = partitions
        self.env = env
        self.workdir = workdir
        self.db = db
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.broker: Any = None
        self.http = f"http://127.0.0.1:{free_port()}"
        self.mqtt_port = 0
        self.user: str | None = None
        self.password: str | None = None

    def start(self) -> None:
        env = {
            "CARGOWATCH_DB": self.db,
            "CARGOWATCH_ADMIN_KEY": ADMIN,
            "CARGOWATCH_LOG_LEVEL": "warning",
            "CARGOWATCH_BUS_DEVICES_GIB": "4",
            "CARGOWATCH_BUS_TRIPS_GIB": "4",
            **self.env,
        }
        port = self.http.rsplit(":", 1)[1]
        if self.name == "mosquitto":
            (self.workdir / "mosquitto").mkdir()
            self.broker = MosquittoServer(self.workdir / "mosquitto").start()
            self.mqtt_port = self.broker.port
            env["CARGOWATCH_MQTT"] = self.broker.url
            self.procs["serve"] = spawn(
                ["serve", "--http", f"127.0.0.1:{port}"], self.workdir / "serve.log", **env
            )
        else:
            self.broker = NatsServer(
                self.workdir / "nats", partitions=self.partitions, devices={PUB_USER: PUB_PASSWORD}
            )
            users = self.broker.workdir / "users.conf"
            # the benchmark's publisher speaks for every device (one MQTT connection)
            users.write_text(
                users.read_text().replace(f'"part.*.devices.{PUB_USER}.*"', '"part.>"')
            )
            self.broker.start()
            self.mqtt_port = self.broker.mqtt_port
            self.user, self.password = PUB_USER, PUB_PASSWORD
            env["CARGOWATCH_BUS"] = self.broker.url
            env["CARGOWATCH_WORKERS"] = "0"
            self.procs["serve"] = spawn(
                ["serve", "--http", f"127.0.0.1:{port}"], self.workdir / "serve.log", **env
            )
            for i in range(int(self.name.split("_")[1])):
                self.procs[f"worker{i}"] = spawn(["worker"], self.workdir / f"worker{i}.log", **env)
        wait_for(self._healthy, 120, f"{self.name}: serve healthy")
        if self.name != "mosquitto":
            wanted = 2 * self.partitions
            wait_for(lambda: len(lease_pids(self.broker.url)) == wanted, 60, "partitions owned")
            time.sleep(2)  # the shares settle (a second worker takes half)

    def stream_sizes(self, records: int) -> dict[str, Any] | None:
        """NATS modes: what the two streams hold now (``records``: messages published)."""
        if self.name == "mosquitto":
            return None

        async def read() -> dict[str, Any]:
            nc = await nats.connect(self.broker.url)
            try:
                js = nc.jetstream()
                out: dict[str, Any] = {
                    name: {"messages": 0, "bytes": 0} for name in ("DEVICES", "TRIPS")
                }
                for info in await js.streams_info():  # a stream per partition: add them up
                    family = str(info.config.name).split("_")[0]
                    if family in out:
                        out[family]["messages"] += info.state.messages
                        out[family]["bytes"] += info.state.bytes
                out["DEVICES"]["bytes_per_message"] = round(
                    out["DEVICES"]["bytes"] / max(1, out["DEVICES"]["messages"]), 1
                )
                # TRIPS holds bundles: per re-keyed record
                out["TRIPS"]["bytes_per_record"] = round(out["TRIPS"]["bytes"] / max(1, records), 1)
                return out
            finally:
                await nc.close()

        return asyncio.run(read())

    def _healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.http}/healthz", timeout=2).status_code == 200
        return False

    @property
    def other_pids(self) -> dict[str, int]:
        """The processes beside the engine's on the same cores: the broker, and in NATS
        modes the API's ``serve`` (the publishers are counted apart)."""
        out = {"broker": self.broker.proc.pid} if self.broker and self.broker.proc else {}
        if self.name != "mosquitto":
            out["serve"] = self.procs["serve"].pid
        return out

    @property
    def engine_pids(self) -> dict[str, int]:
        names = ["serve"] if self.name == "mosquitto" else [n for n in self.procs if n != "serve"]
        return {n: self.procs[n].pid for n in names}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.broker is not None:
            self.broker.stop()


def _profile(
    out: str | None, label: str, pids: dict[str, int], step_s: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy (``pip install py-spy``; needs ptrace) on each engine process for the step."""
    if not out:
        return []
    Path(out).mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(step_s)),
                "--format",
                "speedscope",
                "--rate",
                "200",
                "--gil",  # the CPU a Python process spends is its GIL's time
                "--nonblocking",
                "--output",
                str(Path(out) / f"{label}-{name}.json"),
            ],
            stdout=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def run_step(
    mode: Mode,
    cfg: dict[str, Any],
    rate: int,
    gps: list[str],
    triggers: list[str],
    seq: int,
    store: Any,
    live: LiveReader,
) -> dict[str, Any]:
    step_s = cfg["step_s"]
    k = max(1, math.ceil(rate / PER_PUBLISHER))
    at = [1.0 + i * (step_s - 2.0) / max(1, len(triggers)) for i in range(len(triggers))]
    specs = []
    for j in range(k):
        out = mode.workdir / f"pub-{rate}-{j}.json"
        spec = {
            "host": "127.0.0.1",
            "port": mode.mqtt_port,
            "username": mode.user,
            "password": mode.password,
            "gps": gps[j::k],
            "rate": rate / k,
            "duration_s": step_s,
            "first_seq": seq + j * 10_000_000,
            "triggers": [
                [a, lock]
                for i, (a, lock) in enumerate(zip(at, triggers, strict=True))
                if i % k == j
            ],
            "out": str(out),
        }
        path = mode.workdir / f"pub-{rate}-{j}.spec.json"
        path.write_text(json.dumps(spec))
        specs.append((path, out))
    pids = mode.engine_pids
    profilers = _profile(cfg.get("profile"), f"{mode.name}-{rate}", pids, step_s)
    cpu0 = {n: cpu_s(p) for n, p in pids.items()}
    others = mode.other_pids
    other0 = {n: cpu_s(p) for n, p in others.items()}
    stored0 = store.count_telemetry()["fixes"]
    events0 = len(live.events)
    t0 = time.monotonic()
    pubs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench._live_pub", str(p)],
            cwd=Path(__file__).resolve().parents[1],
        )
        for p, _ in specs
    ]
    peak = dict.fromkeys(pids, 0.0)
    while any(p.poll() is None for p in pubs):
        for n, p in pids.items():
            with contextlib.suppress(OSError):
                peak[n] = max(peak[n], rss_mb(p))
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    t_end = time.monotonic()  # the drain is timed from here, not from after the trigger check
    # while publishing only: who else took the cores the engine wanted
    other_cpu = {n: round((cpu_s(p) - other0[n]) / elapsed, 2) for n, p in others.items()}
    engine_cores = round(sum(cpu_s(p) - cpu0[n] for n, p in pids.items()) / elapsed, 2)
    stored1 = store.count_telemetry()["fixes"]
    results = [json.loads(out.read_text()) for _, out in specs]
    other_cpu["publishers"] = round(sum(r.get("cpu_s", 0.0) for r in results) / elapsed, 2)
    fixes = sum(r["fixes"] for r in results)
    fired = {lock: ts for r in results for lock, ts in r["triggers"]}

    def arrivals() -> dict[str, float]:
        got: dict[str, float] = {}
        for (kind, data), t in zip(list(live.events), list(live.times), strict=False):
            if kind == "alarm.raised" and data.get("type") == "LOCK_TAMPER":
                got.setdefault(str(data.get("device_id")), t)
        return got

    with contextlib.suppress(AssertionError):
        wait_for(lambda: set(fired) <= set(arrivals()), 20, "trigger alarms")
    seen = arrivals()
    latencies = [seen[lock] - ts / 1000 for lock, ts in fired.items() if lock in seen]
    stored_alarms = {
        a.get("device_id") for a in store.list_alarms(limit=10_000) if a["type"] == "LOCK_TAMPER"
    }
    overflows = sum(d.get("dropped", 0) for k, d in list(live.events)[events0:] if k == "overflow")
    backlog = max(0, stored0 + fixes - stored1)
    # drain before the next step, and measure the CPU the step's messages cost
    with contextlib.suppress(AssertionError):
        wait_for(
            lambda: store.count_telemetry()["fixes"] >= stored0 + fixes,
            max(120.0, 4 * step_s),
            "drain",
        )
    drain_s = time.monotonic() - t_end
    drained = store.count_telemetry()["fixes"] - stored0
    cpu = {n: cpu_s(p) - cpu0[n] for n, p in pids.items()}
    for prof in profilers:
        prof.wait()
    p99 = percentile(latencies, 0.99)
    return {
        "offered_msg_per_s": rate,
        "achieved_msg_per_s": round(fixes / elapsed, 1),
        "stored_rows_per_s": round((stored1 - stored0) / elapsed, 1),
        "published": fixes,
        "stored_after_drain": drained,
        "drain_s": round(drain_s, 1),
        "backlog_at_end": backlog,
        "triggers": len(fired),
        "alarmed": len(latencies),
        # raised (in the store) but not seen on /v1/live: dropped by the feed's per-reader
        # buffer (live_events_dropped: position events of a busy fleet fill it)
        "alarms_stored": len(set(fired) & stored_alarms),
        "live_events_dropped": overflows,
        "latency_s": {
            "p50": percentile(latencies, 0.5),
            "p99": p99,
            "max": max(latencies) if latencies else None,
        },
        "peak_rss_mb": {n: round(v, 1) for n, v in peak.items()},
        "cpu_s": {n: round(v, 2) for n, v in cpu.items()},
        "engine_cpu_us_per_msg": round(1e6 * sum(cpu.values()) / max(1, drained), 1),
        # cores the rest took while the step published (the engine's share is what remains)
        "others_cores_while_publishing": other_cpu,
        "engine_cores_while_publishing": engine_cores,
        "sustained": bool(
            p99 is not None and p99 <= 2.0 and len(latencies) == len(fired) and backlog <= 2 * rate
        ),
    }


def run_mode(name: str, cfg: dict[str, Any], pg: PostgresServer, root: Path) -> dict[str, Any]:
    workdir = root / name
    workdir.mkdir()
    db = pg.create_database()
    t = time.monotonic()
    gps, locks = seed(db, cfg["trips"], cfg["gps"])
    seeded_s = time.monotonic() - t
    if cfg.get("order", "shuffled") == "shuffled":
        random.Random(ORDER_SEED).shuffle(gps)
    mode = Mode(name, workdir, db, cfg.get("env") or {}, cfg.get("partitions", PARTITIONS))
    store = open_store(db)
    steps: list[dict[str, Any]] = []
    overload: dict[str, Any] | None = None
    streams: dict[str, Any] | None = None
    try:
        mode.start()
        live = LiveReader(mode.http, ADMIN)
        live.connected.wait(10)
        pool = iter(locks)
        # Warm-up, not reported: each worker loads a trip on its first message, and the first
        # step's p99 measured those loads (3+ s), not a steady state.
        warm = {**cfg, "step_s": min(10.0, cfg["step_s"]), "profile": None}
        run_step(mode, warm, cfg["rates"][0], gps, [], 0, store, live)
        seq = 100_000_000
        for rate in cfg["rates"]:
            triggers = [next(pool) for _ in range(cfg["triggers"])]
            step = run_step(mode, cfg, rate, gps, triggers, seq, store, live)
            seq += 100_000_000
            steps.append(step)
            print(json.dumps({name: step}), file=sys.stderr)
            p99 = step["latency_s"]["p99"]
            if p99 is None or p99 > 30 or step["backlog_at_end"] > 10 * rate:
                break  # far past the knee: higher steps only pile up backlog
        sustained = [s["offered_msg_per_s"] for s in steps if s["sustained"]]
        if cfg.get("overload", True) and sustained:
            rate = 2 * max(sustained)
            triggers = [next(pool) for _ in range(cfg["triggers"])]
            step = run_step(mode, cfg, rate, gps, triggers, seq, store, live)
            overload = {
                **step,
                "stored_vs_sustained": round(step["stored_rows_per_s"] / max(sustained), 3),
                "nothing_lost": step["stored_after_drain"] == step["published"],
            }
            print(json.dumps({name: {"overload": overload}}), file=sys.stderr)
        live.close()
        streams = mode.stream_sizes(store.count_telemetry()["fixes"])
    finally:
        mode.stop()
        store.close()
    sustained = [s["offered_msg_per_s"] for s in steps if s["sustained"]]
    return {
        "overload": overload,
        "fleet": {
            "trips": cfg["trips"],
            "gps": cfg["trips"] * cfg["gps"],
            "locks": cfg["trips"],
            "seed_s": round(seeded_s, 1),
            "order": cfg.get("order", "shuffled"),
        },
        "steps": steps,
        "streams": streams,
        "max_sustained_msg_per_s": max(sustained, default=0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small fleet, 10 s steps")
    parser.add_argument("--modes", default="mosquitto,nats_1,nats_2")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument(
        "--rates", help="offered msg/s per step, comma-separated (default: the ladder's)"
    )
    parser.add_argument("--step-s", type=float, help="seconds a step (default: 60, quick 10)")
    parser.add_argument("--trips", type=int, help="active trips (15 GPS units and a lock each)")
    parser.add_argument(
        "--no-overload", action="store_true", help="no step at twice the sustained rate"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the engine processes, e.g. CARGOWATCH_BATCH_MS=200 (repeatable)",
    )
    parser.add_argument(
        "--order",
        choices=("shuffled", "by-trip"),
        default="shuffled",
        help="the GPS units' publishing order: independent phases (default) or a trip's units "
        "back to back",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=PARTITIONS,
        help=f"NATS modes: device and trip partitions, each (default {PARTITIONS})",
    )
    parser.add_argument(
        "--profile",
        help="record each engine process with py-spy during every step (speedscope files in DIR)",
    )
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.rates:
        cfg["rates"] = [int(r) for r in args.rates.split(",")]
    if args.step_s:
        cfg["step_s"] = args.step_s
    if args.trips:
        cfg["trips"] = args.trips
    cfg["profile"] = args.profile
    cfg["order"] = args.order
    cfg["partitions"] = args.partitions
    cfg["overload"] = not args.no_overload
    cfg["env"] = dict(e.split("=", 1) for e in args.env)
    root = Path(tempfile.mkdtemp(prefix="cw-live-"))
    root.chmod(0o755)  # the cluster runs as the postgres user
    (root / "pg").mkdir()
    pg = PostgresServer(root / "pg").start()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.live"
        + (" --quick" if args.quick else "")
        + (f" --order {args.order}" if args.order != "shuffled" else "")
        + (f" --partitions {args.partitions}" if args.partitions != PARTITIONS else ""),
        "cpus": os.cpu_count(),
    }
    try:
        for name in args.modes.split(","):
            report[name] = run_mode(name, cfg, pg, root)
    finally:
        pg.stop()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
