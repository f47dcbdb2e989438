"""The ``cargowatch`` command line (cargowatch/cli.py), run as a real subprocess
(``python -m cargowatch``): ``serve`` starting on SQLite without a broker, answering with and
without the admin key and stopping with exit code 0 on SIGTERM and SIGINT; a database it
cannot reach; ``simulate`` with an unknown scenario; ``--help``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "cli-test-admin-key-0123456789"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any CARGOWATCH_* setting (no broker, no stray key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _run(*args: str, cwd: Path, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargowatch", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
    )


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def _serve(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cargowatch",
                "serve",
                "--db",
                f"sqlite:///{tmp_path / 's.sqlite'}",
                "--http",
                f"127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            env=_env(CARGOWATCH_ADMIN_KEY=ADMIN_KEY),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_healthy(served)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if served.proc.poll() is not None:
                pytest.fail(
                    f"cargowatch serve exited with {served.proc.returncode} before /healthz "
                    f"answered:\n{served.output()}"
                )
            try:
                r = http.get(served.url + "/healthz")
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
    pytest.fail(f"/healthz did not answer 200 in {START_TIMEOUT_S} s ({last}):\n{served.output()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_with_the_admin_key_and_stops_with_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with _serve(tmp_path) as served:
        with httpx.Client(base_url=served.url, timeout=5.0) as http:
            health = http.get("/healthz").json()
            authed = http.get("/v1/trips", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            anonymous = http.get("/v1/trips")
            wrong = http.get("/v1/trips", headers={"Authorization": "Bearer not-the-key"})
        served.proc.send_signal(sig)
        try:
            code = served.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running {STOP_TIMEOUT_S} s after {sig.name}")
        out = served.output()

    assert health["status"] == "ok" and health["mqtt"] is None, health  # no broker: no ingest
    assert authed.status_code == 200, authed.text
    assert authed.json() == []
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401, wrong.text
    # A signal death would be -15 / -2 here; the graceful shutdown must end in a plain 0.
    assert code == 0, f"exit code {code} after {sig.name}:\n{out}"
    assert "Traceback" not in out, out
    assert "Application shutdown complete" in out, out


def test_sigusr1_dumps_every_threads_stack_and_serve_runs_on(tmp_path: Path) -> None:
    """For a process that will not stop: ``kill -USR1`` writes where each thread is."""
    with _serve(tmp_path) as served:
        served.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "most recent call first" not in served.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        with httpx.Client(timeout=5.0) as http:
            assert http.get(served.url + "/healthz").status_code == 200
        out = served.output()
    assert "most recent call first" in out, out
    assert "Current thread" in out or "Thread 0x" in out, out


BAD_DB = "postgresql://nobody@127.0.0.1:1/x"


def test_serve_with_an_unreachable_database_exits_non_zero(tmp_path: Path) -> None:
    port = free_port()
    done = _run("serve", "--db", BAD_DB, "--http", f"127.0.0.1:{port}", cwd=tmp_path)
    assert done.returncode > 0, f"exit code {done.returncode}:\n{done.stdout}"
    assert "cannot connect to PostgreSQL" in done.stdout, done.stdout


def test_serve_with_an_unreachable_database_says_so_without_a_traceback(
    tmp_path: Path,
) -> None:
    port = free_port()
    done = _run("serve", "--db", BAD_DB, "--http", f"127.0.0.1:{port}", cwd=tmp_path)
    out = done.stdout
    assert done.returncode > 0, f"exit code {done.returncode}:\n{out}"
    assert "Traceback" not in out, out
    error_lines = [ln for ln in out.splitlines() if "cannot connect to PostgreSQL" in ln]
    assert error_lines, out
    assert len([ln for ln in out.splitlines() if ln.strip()]) <= 5, out


def test_simulate_with_an_unknown_scenario_exits_2_and_names_it(tmp_path: Path) -> None:
    done = _run(
        "simulate",
        "--scenario",
        "no_such_thing",
        "--trucks",
        "1",
        "--mqtt",
        "mqtt://127.0.0.1:1",
        cwd=tmp_path,
    )
    assert done.returncode == 2, f"exit code {done.returncode}:\n{done.stdout}"
    assert "unknown scenario 'no_such_thing'" in done.stdout, done.stdout
    assert "route_deviation" in done.stdout, done.stdout  # it lists the valid ones
    assert "Traceback" not in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], ["serve", "demo", "simulate"]),
        (["serve", "--help"], ["--mqtt", "--db", "--http"]),
    ],
    ids=["top", "serve"],
)
def test_help_exits_0(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    done = _run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("usage: cargowatch"), done.stdout
    for word in expected:
        assert word in done.stdout, done.stdout


# -- bad settings: one line on stderr, a non-zero exit, nothing created -------------------------


def _run_quiet(*args: str, cwd: Path, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Like ``_run``, with stderr apart (the error line) from stdout."""
    return subprocess.run(
        [sys.executable, "-m", "cargowatch", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _one_line(done: subprocess.CompletedProcess[str], says: str) -> None:
    err = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode > 0, f"exit code {done.returncode}:\n{done.stderr}"
    assert len(err) == 1, done.stderr
    assert says in err[0], done.stderr
    assert err[0].startswith("cargowatch "), done.stderr


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--http", "foo:bar"], "--http"),
        (["--http", "127.0.0.1:99999"], "from 1 to 65535"),
        (["--http", "http://127.0.0.1:18085"], "without a scheme"),
        (["--http", "localhost"], "explicit port"),
        (["--http", "no-such-host.invalid:18085"], "unknown host"),
        (["--mqtt", "mqtt://broker:port"], "--mqtt"),
        (["--mqtt", "http://broker"], "mqtt://HOST:PORT"),
        (["--db", "mysql://x"], "--db"),
    ],
    ids=[
        "port-not-a-number",
        "port-out-of-range",
        "url-not-address",
        "no-port",
        "unknown-host",
        "mqtt-port",
        "mqtt-scheme",
        "db-scheme",
    ],
)
def test_serve_with_a_bad_setting_says_so_in_one_line_before_creating_anything(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    db = tmp_path / "s.sqlite"
    args = ["serve", "--db", f"sqlite:///{db}", "--http", f"127.0.0.1:{free_port()}", *flags]
    done = _run_quiet(*args, cwd=tmp_path)
    _one_line(done, says)
    assert not db.exists(), "the database was created before the setting was checked"


def test_serve_on_a_port_in_use_says_so_in_one_line_before_opening_the_store(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.sqlite"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_quiet(
            "serve", "--db", f"sqlite:///{db}", "--http", f"127.0.0.1:{port}", cwd=tmp_path
        )
    _one_line(done, f"cannot listen on 127.0.0.1:{port}: address already in use")
    assert not db.exists()


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cargowatch", "serve"],
        cwd=tmp_path,
        env=_env(CARGOWATCH_HTTP="localhost"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    _one_line(done, "CARGOWATCH_HTTP")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["nope", "mqtt://127.0.0.1:1"], ids=["unknown-host", "refused"])
def test_simulate_with_a_broker_that_does_not_answer_exits_at_once(
    tmp_path: Path, url: str
) -> None:
    t0 = time.monotonic()
    done = _run_quiet("simulate", "--mqtt", url, "--trucks", "1", cwd=tmp_path, timeout_s=60)
    _one_line(done, "cannot reach the broker")
    assert time.monotonic() - t0 < 30


def test_serve_starts_with_bad_shipper_rules_in_the_store(tmp_path: Path) -> None:
    """A value the engine refuses, stored by an older version: the start logs it and goes on
    (that shipper runs on the default thresholds) instead of exiting 1."""
    from telemetry.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.put_shipper({"shipper": "x", "sla": {}, "rules": {"corridor_m": 200000}})
    store.close()
    with _serve(tmp_path) as served:
        with httpx.Client(base_url=served.url, timeout=5.0) as http:
            shipper = http.get("/v1/shippers/x", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        out = served.output()
    assert shipper.status_code == 200, shipper.text
    assert "shipper x" in out and "defaults" in out, out


def test_help_shows_defaults_and_scenarios(tmp_path: Path) -> None:
    serve = " ".join(_run("serve", "--help", cwd=tmp_path).stdout.split())
    assert "default: 127.0.0.1:8080; env CARGOWATCH_HTTP" in serve, serve
    assert "default: sqlite:///cargowatch.sqlite; env CARGOWATCH_DB" in serve, serve
    top = " ".join(_run("--help", cwd=tmp_path).stdout.split())
    assert "default: info; env CARGOWATCH_LOG_LEVEL" in top, top
    simulate = " ".join(_run("simulate", "--help", cwd=tmp_path).stdout.split())
    for word in ("route_deviation", "tamper", "mixed", "default: 10", "mqtt://127.0.0.1:1883"):
        assert word in simulate, simulate
    demo = " ".join(_run("demo", "--help", cwd=tmp_path).stdout.split())
    for word in ("unlock_en_route", "default: 24", "default: 127.0.0.1:8080"):
        assert word in demo, demo
