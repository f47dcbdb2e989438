"""The fault benchmark's moving parts: ``cargowatch serve`` as a subprocess (kill -9 and
restart), its peak RSS, a webhook receiver that can be told to fail, PostgreSQL stopped and
started on the same port and data directory, Mosquitto restarted, and read-only probes of the
database (psycopg, straight SQL on the schema of telemetry/store/migrations/postgres.py).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.services import PG_BIN, MosquittoServer, PostgresServer

log = logging.getLogger("bench.faults")


class Serve:
    """``cargowatch serve`` with a fixed environment, restartable; output appended to a log."""

    def __init__(self, env: dict[str, str], http_port: int, log_path: Path) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{http_port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        with self.log_path.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cargowatch", "--log-level", "warning", "serve"],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def wait_http(self, timeout_s: float = 90.0) -> float:
        """Seconds until /healthz answers at all (200 ok or 503 degraded)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early; see {self.log_path}")
            try:
                httpx.get(self.url + "/healthz", timeout=2.0)
                return time.monotonic() - t0
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError(f"serve did not answer /healthz in {timeout_s} s")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout_s: float = 60.0) -> float | None:
        """SIGTERM; seconds until it exited (None: killed after ``timeout_s``)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
            return round(time.monotonic() - t0, 2)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def log_counts(self) -> dict[str, int]:
        text = self.log_path.read_text(errors="replace")
        return {
            "log_tracebacks": text.count("Traceback"),
            "log_not_stored_retrying": text.count("not stored; retrying"),
        }


class RssSampler(threading.Thread):
    """Peak VmRSS (MB) of whichever process ``serve`` currently runs, every ``every_s``."""

    def __init__(self, serve: Serve, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.serve, self.every_s = serve, every_s
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.every_s):
            pid = self.serve.pid
            if pid is None:
                continue
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
            except OSError:
                pass  # exited between the two reads

    def stop(self) -> None:
        self._stop.set()


class HookReceiver:
    """A webhook endpoint on 127.0.0.1: counts the 2xx answers per event id; while
    ``failing`` it answers 500 (and counts those apart)."""

    def __init__(self) -> None:
        self.accepted: collections.Counter[str] = collections.Counter()
        self.first_at: dict[str, float] = {}
        self.repeat_gaps_s: list[float] = []  # real seconds from an event's first copy
        self.refused = 0
        self.failing = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = 500 if outer.failing else 200
                if status == 200:
                    try:
                        event_id = json.loads(body)["id"]
                    except (ValueError, KeyError):
                        event_id, status = None, 400
                    if event_id is not None:
                        outer.accepted[event_id] += 1
                        now = time.monotonic()
                        first = outer.first_at.setdefault(event_id, now)
                        if now > first:
                            outer.repeat_gaps_s.append(round(now - first, 3))
                else:
                    outer.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pg_stop(pg: PostgresServer) -> None:
    """Stop the cluster (fast shutdown: sessions are cut, as in a restart by an operator)."""
    subprocess.run(
        [*pg._as_user, str(PG_BIN / "pg_ctl"), "-D", str(pg.datadir), "-m", "fast", "-w", "stop"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def pg_start(pg: PostgresServer) -> None:
    """Start the stopped cluster again on its port and data directory (as PostgresServer
    starts it, without initdb)."""
    opts = f"-p {pg.port} -k {pg.workdir} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [
            *pg._as_user,
            *(str(PG_BIN / "pg_ctl"), "-D", str(pg.datadir), "-o", opts),
            *("-l", str(pg.workdir / "postgres.log"), "-w", "-t", "60", "start"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def mosquitto_restart(mq: MosquittoServer) -> None:
    """Stop the broker and start it on the same port (its own ``restart`` when it has one)."""
    restart = getattr(mq, "restart", None)
    if restart is not None:
        restart()
    else:
        mq.stop()
        mq.start()


class Probe:
    """Read-only SQL against the run's database; reconnects after the database went away."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
                return self._conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def totals(self, webhook_id: str, created_before: int) -> dict[str, int] | None:
        """Messages stored, tamper alarms, deliveries still pending of events created before
        ``created_before`` (sim ms). None while the database is unreachable."""
        try:
            ((msgs, alarms, pending),) = self._rows(
                "SELECT (SELECT count(*) FROM fixes) + (SELECT count(*) FROM lock_events),"
                " (SELECT count(*) FROM alarms WHERE type = 'LOCK_TAMPER'),"
                " (SELECT count(*) FROM deliveries WHERE webhook_id = %s"
                "   AND status = 'pending' AND (doc->>'created_at')::bigint <= %s)",
                (webhook_id, created_before),
            )
        except psycopg.Error:
            return None
        return {"stored": int(msgs), "alarms": int(alarms), "pending": int(pending)}

    def fix_keys(self) -> list[tuple[Any, ...]]:
        return self._rows("SELECT device_id, ts, seq FROM fixes")

    def lock_keys(self) -> list[tuple[Any, ...]]:
        return self._rows("SELECT device_id, ts, seq FROM lock_events")

    def tamper_alarms(self) -> list[tuple[str, int]]:
        rows = self._rows("SELECT trip_id, ts FROM alarms WHERE type = 'LOCK_TAMPER'")
        return [(str(t), int(ts)) for t, ts in rows]

    def milestones(self) -> list[tuple[str, str, str | None]]:
        rows = self._rows("SELECT trip_id, event FROM trip_events WHERE kind = 'milestone'")
        out = []
        for trip_id, event in rows:
            doc = event if isinstance(event, dict) else json.loads(event)
            out.append(
                (str(trip_id), str(doc.get("milestone") or doc.get("kind")), doc.get("stop_id"))
            )
        return out

    def deliveries(self, webhook_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT status, doc FROM deliveries WHERE webhook_id = %s", (webhook_id,))
        return [{"status": s, **(d if isinstance(d, dict) else json.loads(d))} for s, d in rows]


def env_for(
    mqtt_url: str,
    db_url: str,
    http_port: int,
    admin_key: str,
    client_id: str,
    clock: dict[str, int | float],
) -> dict[str, str]:
    """serve's environment: broker, database, API, admin key, MQTT session and shared clock."""
    return {
        **os.environ,
        "CARGOWATCH_MQTT": mqtt_url,
        "CARGOWATCH_DB": db_url,
        "CARGOWATCH_HTTP": f"127.0.0.1:{http_port}",
        "CARGOWATCH_ADMIN_KEY": admin_key,
        "CARGOWATCH_CLIENT_ID": client_id,
        "CARGOWATCH_ALLOW_PRIVATE_TARGETS": "1",  # the webhook receiver is on 127.0.0.1
        "CARGOWATCH_CLOCK_SPEED": str(clock["speed"]),
        "CARGOWATCH_CLOCK_START_MS": str(int(clock["start_ms"])),
        "CARGOWATCH_CLOCK_ANCHOR_MS": str(int(clock["anchor_ms"])),
    }
