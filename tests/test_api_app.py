"""The app around a runtime: lifespan, OpenAPI docs, health and metrics."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn

from api import ApiServer, create_app
from core.clock import ManualClock
from tests.api_world import ADMIN_KEY, api_client, make_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_docs_and_openapi_without_a_key(tmp_path) -> None:
    runtime = make_runtime(tmp_path, ManualClock())
    async with api_client(create_app(runtime)) as client:
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = (await client.get("/openapi.json")).json()
    runtime.close()
    paths = schema["paths"]
    for path in (
        "/v1/devices",
        "/v1/geofences",
        "/v1/trips",
        "/v1/trips/{trip_id}",
        "/v1/trips/{trip_id}/complete",
        "/v1/trips/{trip_id}/cancel",
        "/v1/trips/{trip_id}/track",
        "/v1/alarms",
        "/v1/alarms/{alarm_id}",
        "/v1/alarms/{alarm_id}/ack",
        "/v1/alarms/{alarm_id}/resolve",
        "/v1/replay",
        "/v1/live",
        "/v1/webhooks",
        "/v1/webhooks/{webhook_id}",
        "/v1/webhooks/deliveries",
        "/v1/reports/kpi",
        "/v1/dead-letters",
        "/v1/shippers/{shipper}",
        "/v1/keys",
        "/healthz",
        "/metrics",
    ):
        assert path in paths, path
    assert "ApiKey" in schema["components"]["securitySchemes"]
    resolve = paths["/v1/alarms/{alarm_id}/resolve"]["post"]
    assert "409" in resolve["responses"] and "403" in resolve["responses"]


async def test_lifespan_runs_the_runtime_and_health_follows(tmp_path) -> None:
    runtime = make_runtime(tmp_path, ManualClock())
    app = create_app(runtime)
    async with api_client(app) as client:
        # not started: the engine's loops are not running
        r = await client.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        async with app.router.lifespan_context(app):
            r = await client.get("/healthz")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "ok" and r.json()["store"] is True
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "# TYPE" in metrics.text
        r = await client.get("/healthz")
        assert r.status_code == 503
    runtime.close()


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _serve(server: uvicorn.Server, sock: socket.socket) -> asyncio.Task[None]:
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)
    return serving


@pytest.mark.parametrize("open_stream", [False, True])
async def test_real_server_streams_and_shuts_down_cleanly(tmp_path, open_stream: bool) -> None:
    """uvicorn end to end; with ``open_stream`` a client is still reading the live feed when
    the server stops: ApiServer ends the stream instead of waiting out the graceful timeout
    (60 s here, far beyond the test's own 10 s limit)."""
    runtime = make_runtime(tmp_path, ManualClock())
    app = create_app(runtime, heartbeat_s=0.1)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=60, lifespan="on")
    server = ApiServer(config)
    serving = await _serve(server, sock)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    seen = b""
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/v1/trips", headers=headers)
            assert r.status_code == 200 and r.json() == []
            async with client.stream("GET", "/v1/live", headers=headers) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async with asyncio.timeout(10):
                    async for chunk in stream.aiter_bytes():
                        seen += chunk
                        if seen.count(b": heartbeat") >= 2:
                            if not open_stream:
                                break
                            server.should_exit = True  # the stream must end by itself
        server.should_exit = True
        async with asyncio.timeout(10):
            await serving
    finally:
        server.should_exit = True
        if not serving.done():
            serving.cancel()
        sock.close()
        runtime.close()
    assert seen.startswith(b"retry: ")
    assert runtime.health()["status"] == "degraded"  # the lifespan stopped the runtime
