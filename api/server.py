"""uvicorn, with live streams told to end as soon as shutdown begins.

uvicorn waits for open connections to finish (up to ``timeout_graceful_shutdown``) *before*
it runs the app's lifespan shutdown, so an open ``GET /v1/live`` would hold every shutdown
for the whole timeout and then be cancelled. ``ApiServer`` ends the streams first.
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from api.app import begin_shutdown


class ApiServer(uvicorn.Server):
    """A ``uvicorn.Server`` for an app made by ``api.create_app``."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        if isinstance(app, FastAPI):  # made by create_app: it has live streams to end
            begin_shutdown(app)
        await super().shutdown(sockets)
