"""Refuse before reading (issue 15's probe, on a real ``cargowatch serve`` over HTTP).

- with no key, a 100 MiB body (also four at once, also chunked) is answered 401 without the
  server's memory growing (the probe: +251 MB for one, 776 MB peak for four);
- with a key, a body over ``CARGOWATCH_MAX_BODY_BYTES`` is 413, announced or chunked;
- unknown keys from one address: after ``CARGOWATCH_KEY_FAILURES_PER_MIN`` of them, 429;
- a NUL byte (or another control character) in a query parameter or path is 400, not 503.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.limits import FailureLimiter
from tests.services import free_port

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "security-test-admin-key-0123456789"
MIB = 1_048_576
#: generous: the process's peak RSS may grow by this much while refusing 100s of MiB
RSS_MARGIN = 40 * MIB


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOWATCH_")}
    env.update(
        PYTHONPATH=str(REPO),
        CARGOWATCH_ADMIN_KEY=ADMIN_KEY,
        CARGOWATCH_KEY_FAILURES_PER_MIN="1000",
        CARGOWATCH_LOG_LEVEL="warning",
    )
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "cargowatch", "serve"),
            *("--db", f"sqlite:///{tmp / 's.sqlite'}", "--http", f"127.0.0.1:{port}"),
        ],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "serve.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


def _body(total: int, chunk: int = MIB) -> Iterator[bytes]:
    block = b'{"trip_id": "x", "pad": "' + b"a" * chunk + b'"}'
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        sent += len(piece)
        yield piece


def _post(url: str, total: int, headers: dict[str, str], *, chunked: bool = False) -> int | None:
    """POST ``total`` bytes; the status, or None when the server closed while we sent."""
    h = {"content-type": "application/json", **headers}
    if not chunked:
        h["content-length"] = str(total)
    try:
        r = httpx.post(url + "/v1/trips", content=_body(total), headers=h, timeout=60)
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return None
    return r.status_code


def test_big_bodies_without_a_key_are_refused_unread(served: tuple[str, int]) -> None:
    url, pid = served
    before = _rss(pid)
    for headers in ({}, {"Authorization": "Bearer not-a-key"}):
        assert _post(url, 100 * MIB, headers) in (401, None)
        assert _post(url, 100 * MIB, headers, chunked=True) in (401, None)
    results: list[int | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(_post(url, 100 * MIB, {}))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 4 and set(results) <= {401, None}
    # a small request still gets its 401 answered, as JSON
    r = httpx.post(url + "/v1/trips", json={"x": 1}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    peak = _rss(pid, "VmHWM")
    assert peak - before < RSS_MARGIN, f"peak RSS grew by {(peak - before) / MIB:.0f} MiB"


@pytest.mark.parametrize("chunked", [False, True], ids=["announced", "chunked"])
def test_a_body_over_the_limit_is_413_with_a_key(served: tuple[str, int], chunked: bool) -> None:
    url, pid = served
    before = _rss(pid)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert _post(url, 50 * MIB, auth, chunked=chunked) in (413, None)
    # just over the default 1 MiB limit: the answer is read
    status = _post(url, MIB + 1, auth, chunked=chunked)
    assert status in (413, None)
    if not chunked:
        r = httpx.post(
            url + "/v1/devices",
            content=b" " * (MIB + 10),
            headers={**auth, "content-type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    # under the limit, a big valid body is served as before
    r = httpx.post(
        url + "/v1/devices",
        content=b'{"device_id": "big-1", "kind": "gps", "name": "'
        + b"n" * 150
        + b'"}'
        + b" " * (MIB - 300),
        headers={**auth, "content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text
    assert _rss(pid, "VmHWM") - before < RSS_MARGIN


@pytest.mark.parametrize(
    "target",
    [
        "/v1/alarms?status=open%00",
        "/v1/alarms?trip_id=PG%00",
        "/v1/trips?shipper=pg%00x",
        "/v1/dead-letters?reason=%00",
        "/v1/reports/kpi?from=2026%00",
        "/v1/trips/PG%00-1",
        "/v1/trips/PG-1/track?from=%01",
        "/v1/alarms?trip_id=%FF",
    ],
)
def test_bad_bytes_in_parameters_are_400(served: tuple[str, int], target: str) -> None:
    url, _ = served
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.get(url + target, headers=auth, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_request"


def test_unknown_keys_from_one_address_are_limited(tmp_path: Path) -> None:
    """Here in-process (the limit of the served app is set high for the other tests)."""
    import asyncio

    from api import create_app
    from api.limits import ApiLimits
    from cargowatch.runtime import Runtime
    from cargowatch.settings import Settings

    runtime = Runtime.open(
        Settings(db_url=f"sqlite:///{tmp_path / 'k.sqlite'}", admin_key=ADMIN_KEY)
    )
    app = create_app(runtime, limits=ApiLimits(key_failures_per_min=20))

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
        other = httpx.ASGITransport(app=app, client=("203.0.113.8", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://cw") as c:
            for i in range(20):
                r = await c.get("/v1/trips", headers={"Authorization": f"Bearer guess-{i}"})
                assert r.status_code == 401
            r = await c.get("/v1/trips", headers={"Authorization": "Bearer guess-21"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            # even the right key waits: guessing must not pay off
            r = await c.get("/v1/trips", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 429
        async with httpx.AsyncClient(transport=other, base_url="http://cw") as c:
            r = await c.get("/v1/trips", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 200

    try:
        asyncio.run(run())
    finally:
        runtime.close()


def test_failure_limiter_window_and_memory() -> None:
    now = [0.0]
    limiter = FailureLimiter(3, window_s=60, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        limiter.failed("a")
    assert limiter.retry_after_s("a") == 60
    now[0] = 30
    assert limiter.retry_after_s("a") == 30
    now[0] = 60.5
    assert limiter.retry_after_s("a") == 0
    for client in ("b", "c", "d"):
        limiter.failed(client)
    assert len(limiter._failures) == 2  # bounded, oldest forgotten
