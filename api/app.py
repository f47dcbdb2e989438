"""The FastAPI application around one runtime.

The app's lifespan owns the running system: ``runtime.running()`` starts the MQTT ingest,
the engine's tick loop, the escalation loop and the webhook sender in one task group and
stops them (awaited) when the server shuts down. Live streams are told to end first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.deps import RuntimeLike
from api.errors import install_error_handlers
from api.limits import ApiLimits
from api.routers import ROUTERS
from api.security import GuardMiddleware

log = logging.getLogger(__name__)

DESCRIPTION = """\
Monitoring of sealed-cargo trucks: devices, trips, geofences, alarms with deadlines,
replay, live feed (SSE), webhooks and KPIs. Send `Authorization: Bearer <api key>`.
Every error is `{"error": {"code", "message"}}`. Times: RFC 3339 UTC in responses;
RFC 3339 or epoch milliseconds accepted in parameters.
"""


@dataclass(slots=True)
class LiveControl:
    """Shared by the live streams of one app: heartbeat period and the shutdown signal."""

    heartbeat_s: float = 15.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """End every live stream (they finish their current frame and close)."""
        self.stopping.set()


def begin_shutdown(app: FastAPI) -> None:
    """Tell live streams to end now. uvicorn drains open connections *before* it runs the
    lifespan shutdown, so a server that wants a quick exit calls this when it starts
    shutting down (e.g. from an overridden ``uvicorn.Server.shutdown``)."""
    app.state.live.stop()


def create_app(
    runtime: RuntimeLike, *, heartbeat_s: float = 15.0, limits: ApiLimits | None = None
) -> FastAPI:
    """The HTTP API (contract §7) over ``runtime``; ``heartbeat_s`` is the SSE idle period;
    ``limits`` (body size, failed keys per minute) default to the settings' defaults."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.live.stopping = asyncio.Event()
        async with runtime.running():
            log.info("cargowatch API started")
            try:
                yield
            finally:
                app.state.live.stop()
        log.info("cargowatch API stopped")

    app = FastAPI(
        title="cargowatch",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.runtime = runtime
    app.state.live = LiveControl(heartbeat_s=heartbeat_s)
    install_error_handlers(app)
    # Outermost: refuses bad bytes, unknown keys and big bodies before anything reads them.
    app.add_middleware(GuardMiddleware, limits=limits)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/config.json", include_in_schema=False)
    def desk_config() -> dict[str, Any]:
        return {
            "tiles": runtime.tiles,
            "clock_speed": runtime.clock_speed,
            "now": runtime.clock.now_ms(),
        }

    # The desk page, served by the API itself; mounted last so /v1 routes win.
    static_dir = Path(__file__).parent / "static"
    if static_dir.is_dir():
        app.mount("/", StaticFiles(directory=static_dir, html=True), name="desk")
    return app
