"""``GET /healthz`` and ``GET /metrics`` (no key needed: probes and Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    store: bool | None = None
    mqtt: bool | None = None


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "degraded"}},
)
async def healthz(runtime: RuntimeDep) -> Any:
    """``ok`` (200) or ``degraded`` (503) with the state of the store and the broker."""
    health = await run_in_threadpool(runtime.health)
    return JSONResponse(health, status_code=200 if health.get("status") == "ok" else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text exposition format (metrics listed in docs/operations.md)."""
    body = await run_in_threadpool(runtime.metrics_text)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
