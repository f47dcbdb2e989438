"""``GET /healthz`` and ``GET /metrics`` (no key needed: probes and Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
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
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(runtime: RuntimeDep) -> PlainTextResponse:
    """Prometheus text exposition format."""
    text = await run_in_threadpool(runtime.metrics_text)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
