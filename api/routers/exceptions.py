"""``/v1/exceptions``: what people report on a trip (damage, quantity, information, time,
other). An exception is handled like an alarm (deadlines by severity, escalation,
acknowledge, resolve, assign, notes, feedback: the same functions as ``/v1/alarms``, which
also answers for an exception's id); ``GET /v1/alarms`` lists only the engine's alarms.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import status as http_status
from pydantic import BaseModel, ConfigDict, Field

from alerts import ExceptionType
from api.auth import AdminOrTenant, AnyKey, Desk, DeskOrTenant
from api.deps import RuntimeDep
from api.errors import ERROR_RESPONSES
from api.params import TIME_HELP, AnyId, Limit
from api.routers import alarms as handling
from api.routers.alarms import (
    CONFLICT,
    AckIn,
    AlarmOut,
    AssignIn,
    FeedbackIn,
    NoteIn,
    ResolveIn,
)
from api.routers.trips import visible_trip

router = APIRouter(prefix="/v1/exceptions", tags=["exceptions"], responses=ERROR_RESPONSES)

KIND = "exception"


class ExceptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trip_id: str = Field(min_length=1, max_length=128)
    type: ExceptionType
    stop_id: str | None = Field(None, min_length=1, max_length=128)
    description: str = Field(min_length=1, max_length=4000)
    severity: Literal["critical", "major", "minor"] | None = Field(
        None, description="decides the deadlines (default major)"
    )


class ExceptionOut(AlarmOut):
    exception_id: str
    description: str | None = None
    stop_id: str | None = None
    reported_by: str | None = None


@router.post("", status_code=http_status.HTTP_201_CREATED, response_model=ExceptionOut)
def report_exception(body: ExceptionIn, runtime: RuntimeDep, principal: DeskOrTenant) -> dict:
    """Report an exception on a trip (desk, admin, or the trip's shipper): deadlines from
    the shipper's SLA for its severity, ``exception.created`` to the shipper's webhooks
    and the live feed."""
    visible_trip(runtime, principal, body.trip_id)
    return runtime.report_exception(
        body.trip_id,
        type=body.type.value,
        description=body.description,
        stop_id=body.stop_id,
        severity=body.severity,
        by=principal.actor,
        key_id=principal.key_id,
    )


@router.get("", response_model=list[ExceptionOut])
def list_exceptions(
    runtime: RuntimeDep,
    principal: AnyKey,
    status: Annotated[
        str | None,
        Query(max_length=64, description="open, acknowledged, resolved (comma-separated)"),
    ] = None,
    type: ExceptionType | None = None,
    trip_id: Annotated[str | None, Query(max_length=128)] = None,
    shipper: Annotated[str | None, Query(max_length=128)] = None,
    assigned_to: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(description=f"raised at or after; {TIME_HELP}")] = None,
    until: Annotated[str | None, Query(description=f"raised before; {TIME_HELP}")] = None,
    limit: Limit = 500,
    history: Annotated[bool, Query(description="include each one's history")] = True,
) -> list[dict[str, Any]]:
    """Exceptions, newest first; a shipper key sees only its own."""
    return handling.list_kind(
        runtime,
        principal,
        KIND,
        status=status,
        type=None if type is None else type.value,
        trip_id=trip_id,
        shipper=shipper,
        assigned_to=assigned_to,
        since=since,
        until=until,
        limit=limit,
        history=history,
    )


@router.get("/{exception_id}", response_model=ExceptionOut)
def get_exception(exception_id: AnyId, runtime: RuntimeDep, principal: AnyKey) -> dict:
    """One exception with its history and its trip's carrier."""
    doc = handling.visible_alarm(runtime, principal, exception_id, KIND)
    return handling.full_view(runtime, doc)


@router.post("/{exception_id}/ack", response_model=ExceptionOut, responses=CONFLICT)
def ack_exception(exception_id: AnyId, body: AckIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Acknowledge an open exception (409 when it is not open)."""
    return handling.ack(runtime, principal, exception_id, body, KIND)


@router.post("/{exception_id}/resolve", response_model=ExceptionOut, responses=CONFLICT)
def resolve_exception(
    exception_id: AnyId, body: ResolveIn, runtime: RuntimeDep, principal: Desk
) -> dict:
    """Resolve an exception with cause, action and customer feedback (409 when resolved)."""
    return handling.resolve(runtime, principal, exception_id, body, KIND)


@router.post("/{exception_id}/assign", response_model=ExceptionOut, responses=CONFLICT)
def assign_exception(
    exception_id: AnyId, body: AssignIn, runtime: RuntimeDep, principal: Desk
) -> dict:
    """Make the exception a desk operator's (null: nobody's)."""
    return handling.assign(runtime, principal, exception_id, body, KIND)


@router.post("/{exception_id}/notes", response_model=ExceptionOut)
def note_exception(exception_id: AnyId, body: NoteIn, runtime: RuntimeDep, principal: Desk) -> dict:
    """Log a call about the exception."""
    return handling.add_note(runtime, principal, exception_id, body, KIND)


@router.post("/{exception_id}/feedback", response_model=ExceptionOut, responses=CONFLICT)
def feedback_exception(
    exception_id: AnyId, body: FeedbackIn, runtime: RuntimeDep, principal: AdminOrTenant
) -> dict:
    """The shipper's verdict on a resolved exception (409 before)."""
    return handling.feedback(runtime, principal, exception_id, body, KIND)
