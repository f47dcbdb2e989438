"""``GET /v1/dead-letters``: messages ingest could not accept, with the reason and payload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.auth import Desk
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES
from api.params import TIME_HELP, Limit, optional_time
from api.render import render_dead_letter

router = APIRouter(prefix="/v1", tags=["dead letters"], responses=ERROR_RESPONSES)


class DeadLetterOut(BaseModel):
    id: int | str | None
    topic: str | None
    device_id: str | None
    received_at: str | None
    reason: str
    detail: str | None
    payload: str
    payload_encoding: str
    payload_bytes: int


@router.get("/dead-letters", response_model=list[DeadLetterOut])
def dead_letters(
    runtime: RuntimeDep,
    principal: Desk,
    reason: Annotated[
        str | None, Query(max_length=64, description="bad_json, schema, unknown_device, ...")
    ] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(description=f"received at or after; {TIME_HELP}")] = None,
    limit: Limit = 100,
) -> list[dict]:
    """Newest first; the payload as UTF-8 text when it decodes, else base64."""
    rows = runtime.store.dead_letters(
        reason=reason, device_id=device_id, since_ms=optional_time(since, "since"), limit=limit
    )
    return [render_dead_letter(d) for d in rows]
